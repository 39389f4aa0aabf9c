"""Images as the pool manages them: builds run in the background with visible progress, and an
image that VMs still use cannot be deleted."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.operations import OperationService
from virtpool.control.store.tables import VMRow
from virtpool.model.agent import ByteStream, ImageStoreContract
from virtpool.model.errors import Conflict, InvalidRequest, NotFound, VirtpoolError
from virtpool.model.image import BuildStatus, Firmware, ImageInfo
from virtpool.model.operation import Operation
from virtpool.model.spec import NAME_RULE, valid_name

log = logging.getLogger(__name__)


class ImageService:
    def __init__(self, sessions: sessionmaker[Session], agent: ImageStoreContract,
                 operations: OperationService) -> None:
        self._sessions = sessions
        self._agent = agent
        self._operations = operations
        self._builds: dict[str, BuildStatus] = {}
        self._build_ops: dict[str, str] = {}  # image name -> id of the operation building it
        self._lock = threading.Lock()

    def list(self) -> list[ImageInfo]:
        return self._agent.list_images()

    def get(self, name: str) -> ImageInfo:
        return self._agent.get_image(name)

    def files(self, name: str) -> dict[str, Iterator[bytes]]:
        """The image's files as streams, for an agent that lacks the image."""
        info = self._agent.get_image(name)
        return {field: self._agent.image_file(name, field)
                for field in ("kernel", "initrd", "disk") if getattr(info, field) is not None}

    def delete(self, name: str) -> None:
        self._agent.get_image(name)
        with self._sessions() as session:
            users = list(session.scalars(select(VMRow.name).where(VMRow.image == name).limit(5)))
        if users:
            raise Conflict(
                f"image '{name}' is used by VMs: {', '.join(users)}",
                hint="delete those VMs first",
            )
        self._agent.delete_image(name)

    def import_files(self, name: str, files: Mapping[str, ByteStream], *, kernel_args: str,
                     firmware: Firmware | None = None) -> ImageInfo:
        """Store an image from streams: "kernel", "initrd", "disk" (see Agent.import_image)."""
        return self._agent.import_image(name, files, kernel_args=kernel_args, firmware=firmware)

    def start_build(self, name: str, *, actor: str = "virtpool") -> Operation:
        """Start building ``name`` in the background, or return the build under way."""
        if not valid_name(name):
            raise InvalidRequest(f"'{name}' is not a valid image name", hint=NAME_RULE)
        with self._lock:
            current = self._builds.get(name)
            if current is not None and current.state == "running":
                return self._operations.get(self._build_ops[name])
            status = BuildStatus(name=name, state="running", step="starting")
            self._builds[name] = status
            op = self._operations.begin("image.build", name, actor=actor, message="starting")
            self._build_ops[name] = op.id
        threading.Thread(target=self._build, args=(status, op.id), name=f"build-{name}", daemon=True).start()
        return op

    def build_status(self, name: str) -> BuildStatus:
        status = self._builds.get(name)
        if status is None:
            raise NotFound(f"no build of image '{name}' was started", hint="start one: virtpool image build")
        return status

    def build_now(self, name: str) -> BuildStatus:
        """Build in this thread (used by `virtpool up` before it serves)."""
        status = BuildStatus(name=name, state="running")
        self._builds[name] = status
        self._build(status)
        return status

    def _build(self, status: BuildStatus, op_id: str | None = None) -> None:
        def progress(step: str, fraction: float) -> None:
            changed = step != status.step or int(fraction * 100) != int(status.progress * 100)
            status.step, status.progress = step, fraction
            if op_id is not None and changed:  # each new step or percent, not every callback
                self._operations.progress(op_id, int(fraction * 100), step)

        try:
            _, built = self._agent.build_image(status.name, progress)
        except Exception as err:
            if not isinstance(err, VirtpoolError):
                log.exception("build of image %s failed", status.name)
            status.state = "failed"
            status.error = str(err) if isinstance(err, VirtpoolError) else f"internal error: {err!r}"
            if op_id is not None:
                self._operations.fail(op_id, status.error)
            return
        status.built, status.progress, status.state, status.step = built, 1.0, "done", "done"
        if op_id is not None:
            self._operations.succeed(op_id, "built" if built else "up to date (cached)",
                                     {"image": status.name, "built": built})
