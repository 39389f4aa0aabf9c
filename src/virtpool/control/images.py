"""Images as the pool manages them: the set lives in the database, so every server sharing it
lists and shows the same images; each server keeps the bytes of some in its own store, records
which in ``image_copies``, and fetches those it lacks from a peer that holds them. Builds run in
the background with visible progress, and an image that VMs still use cannot be deleted."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.image_peers import PeerImages, PeerUnreachable
from virtpool.control.operations import OperationService
from virtpool.control.store.tables import ImageCopyRow, ImageRow, VMRow
from virtpool.control.vms.fetch import TO_SERVER, FetchProgress, Report
from virtpool.model.agent import ByteStream, ImageStoreContract
from virtpool.model.errors import (
    Conflict,
    ImageUnavailable,
    InvalidRequest,
    NotFound,
    VirtpoolError,
)
from virtpool.model.image import IMAGE_FILES, BuildStatus, Firmware, ImageInfo, same_files
from virtpool.model.operation import Operation
from virtpool.model.spec import NAME_RULE, valid_name

log = logging.getLogger(__name__)

SYNC_PERIOD_S = 10.0


class ImageService:
    """The pool's images. ``store`` holds this server's bytes; ``server`` is this server's id
    in ``image_copies``; ``url`` says where its peers fetch from it (None until it listens)."""

    def __init__(self, sessions: sessionmaker[Session], store: ImageStoreContract,
                 operations: OperationService, *, server: str, peers: PeerImages | None = None,
                 url: Callable[[], str | None] = lambda: None) -> None:
        self._sessions = sessions
        self._store = store
        self._operations = operations
        self._server = server
        self._peers = peers
        self._url = url
        self._builds: dict[str, BuildStatus] = {}
        self._build_ops: dict[str, str] = {}  # image name -> id of the operation building it
        self._lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}

    # -- the pool's set ----------------------------------------------------------------------

    def list(self) -> list[ImageInfo]:
        with self._sessions() as session:
            rows = session.scalars(select(ImageRow).order_by(ImageRow.name))
            return [ImageInfo.model_validate(r.manifest) for r in rows]

    def get(self, name: str) -> ImageInfo:
        with self._sessions() as session:
            row = session.get(ImageRow, name)
            if row is not None:
                return ImageInfo.model_validate(row.manifest)
        hint = (f"build it: virtpool image build {name}" if name in ("default", "debian-12")
                else "see `virtpool image list`, or import one with `virtpool image import`")
        raise NotFound(f"no image named '{name}'", hint=hint)

    def delete(self, name: str) -> None:
        """Delete the image pool-wide: its row goes now, this server's bytes too; the other
        servers holding a copy remove theirs in their next sync round (their copy rows say so)."""
        self.get(name)
        with self._sessions.begin() as session:
            users = list(session.scalars(select(VMRow.name).where(VMRow.image == name).limit(5)))
            if users:
                raise Conflict(f"image '{name}' is used by VMs: {', '.join(users)}",
                               hint="delete those VMs first")
            session.execute(delete(ImageRow).where(ImageRow.name == name))
            session.execute(delete(ImageCopyRow).where(ImageCopyRow.image == name,
                                                       ImageCopyRow.server == self._server))
        with self._name_lock(name):
            self._drop_local(name)

    # -- bytes ---------------------------------------------------------------------------------

    def files(self, name: str, progress: Report | None = None) -> dict[str, Iterator[bytes]]:
        """The image's files as streams from this server's store, fetched from a peer first if
        this server lacks them (see :meth:`ensure_local`)."""
        info = self.ensure_local(name, progress)
        return {field: self._store.image_file(name, field)
                for field in IMAGE_FILES if getattr(info, field) is not None}

    def local_file(self, name: str, file: str) -> Iterator[bytes]:
        """One file of this server's own copy (what a peer fetches); NotFound without one."""
        info = self.get(name)
        local = self._local(name)
        if local is None or not same_files(local, info):
            raise NotFound(f"this server holds no copy of image '{name}'",
                           hint="fetch it from a server that does (see image_copies)")
        return self._store.image_file(name, file)

    def ensure_local(self, name: str, progress: Report | None = None) -> ImageInfo:
        """The pool's image ``name``, its bytes in this server's store: fetched from a peer
        that holds a copy when this server lacks it (streamed, each file's SHA-256 and size
        checked against the manifest, then kept). ``progress`` hears how far the bytes got.
        Raises ImageDamaged (nothing kept) or ImageUnavailable (no holder answered)."""
        info = self.get(name)
        with self._name_lock(name):
            local = self._local(name)
            if local is not None and same_files(local, info):
                return info
            if local is not None:  # an old image of that name, deleted and imported again
                self._store.delete_image(name)
            self._fetch(info, progress)
            self._record_copy(name)
        return info

    def _fetch(self, info: ImageInfo, progress: Report | None) -> None:
        with self._sessions() as session:
            copies = [(c.server, c.url) for c in session.scalars(select(ImageCopyRow).where(
                ImageCopyRow.image == info.name, ImageCopyRow.server != self._server))]
        holders = [url for _, url in copies if url]
        if not holders or self._peers is None:
            raise ImageUnavailable(f"no server of the pool holds the bytes of image '{info.name}'",
                                   hint="import it again (`virtpool image import`)")
        fields = [f for f in IMAGE_FILES if getattr(info, f) is not None]
        failures = []
        for url in holders:
            try:
                self._peers.probe(url, info.name, fields[0])
                files = {f: self._peers.stream(url, info.name, f) for f in fields}
                if progress is not None:
                    files = FetchProgress(info, f"this server from {url}", progress, TO_SERVER).wrap(files)
                log.info("fetching image %s from the server at %s", info.name, url)
                self._store.receive_image(info, files)
                return
            except PeerUnreachable as err:
                log.warning("the server at %s did not give image %s: %s", url, info.name, err)
                failures.append(f"{url} ({err})")
        raise ImageUnavailable(
            f"image '{info.name}' is not on this server, and no server holding it answered: "
            f"{'; '.join(failures)}",
            hint=f"retry when the server at {' or '.join(holders)} is back")

    # -- import and build ----------------------------------------------------------------------

    def import_files(self, name: str, files: Mapping[str, ByteStream], *, kernel_args: str,
                     firmware: Firmware | None = None) -> ImageInfo:
        """Store an image from streams: "kernel", "initrd", "disk" (see Agent.import_image);
        once its bytes are checked, record it and this server's copy in one transaction."""
        if not valid_name(name):
            raise InvalidRequest(f"'{name}' is not a valid image name", hint=NAME_RULE)
        with self._name_lock(name):
            self._refuse_existing(name)
            self._drop_local(name)  # bytes of an image deleted pool-wide, not pruned yet
            info = self._store.import_image(name, files, kernel_args=kernel_args, firmware=firmware)
            try:
                self._record(info, replace=False)
            except BaseException:
                self._store.delete_image(name)
                raise
        return info

    def _refuse_existing(self, name: str) -> None:
        with self._sessions() as session:
            if session.get(ImageRow, name) is not None:
                raise Conflict(f"an image named '{name}' exists", hint="delete it first or pick another name")

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
            with self._name_lock(status.name):
                info, built = self._store.build_image(status.name, progress)
                self._record(info, replace=True)
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

    # -- the record of which server holds what ----------------------------------------------

    def _record(self, info: ImageInfo, *, replace: bool) -> None:
        """The image and this server's copy, in one transaction. A new manifest (``replace``:
        a rebuild) drops the other servers' copies of the old bytes; without ``replace`` an
        image of that name is a Conflict."""
        try:
            with self._sessions.begin() as session:
                row = session.get(ImageRow, info.name)
                if row is not None and not replace:
                    raise Conflict(f"an image named '{info.name}' exists",
                                   hint="delete it first or pick another name")
                if row is None or not same_files(ImageInfo.model_validate(row.manifest), info):
                    if row is None:
                        session.add(ImageRow(name=info.name, manifest=info.model_dump(mode="json")))
                    else:
                        row.manifest = info.model_dump(mode="json")
                    # Copies of another image of that name (deleted, or rebuilt): not this one.
                    session.execute(delete(ImageCopyRow).where(ImageCopyRow.image == info.name,
                                                               ImageCopyRow.server != self._server))
                session.merge(ImageCopyRow(image=info.name, server=self._server, url=self._url()))
        except IntegrityError as err:  # another server recorded that name at the same moment
            raise Conflict(f"an image named '{info.name}' exists",
                           hint="delete it first or pick another name") from err

    def _record_copy(self, name: str) -> None:
        with self._sessions.begin() as session:
            session.merge(ImageCopyRow(image=name, server=self._server, url=self._url()))

    def sync(self) -> None:
        """One round (every SYNC_PERIOD_S on each server): remove this server's bytes of images
        deleted pool-wide (or replaced by other bytes of that name) unless a VM still names
        them, record the copies it holds (with its current URL), and take in images found in
        its store that the pool does not know (a store from before the images table). Cheap:
        three queries and a directory listing."""
        url = self._url()
        local = {i.name: i for i in self._store.list_images()}
        with self._sessions() as session:
            pooled = {r.name: ImageInfo.model_validate(r.manifest) for r in session.scalars(select(ImageRow))}
            mine = {c.image: c.url for c in session.scalars(
                select(ImageCopyRow).where(ImageCopyRow.server == self._server))}
            used = set(session.scalars(select(VMRow.image).distinct()))
        for name, info in local.items():
            lock = self._name_lock(name)
            if not lock.acquire(blocking=False):
                continue  # a fetch, import or build of it is under way: the next round looks
            try:
                self._sync_one(name, info, pooled.get(name), name in mine, mine.get(name) != url,
                               name in used)
            finally:
                lock.release()
        # Copies recorded here whose bytes are gone (a fetch that ended since the listing has its
        # bytes: looked at again).
        gone = [name for name in set(mine) - set(local) if self._local(name) is None]
        if gone:
            with self._sessions.begin() as session:
                session.execute(delete(ImageCopyRow).where(ImageCopyRow.server == self._server,
                                                           ImageCopyRow.image.in_(gone)))

    def _sync_one(self, name: str, info: ImageInfo, pooled: ImageInfo | None, recorded: bool,
                  moved: bool, used: bool) -> None:
        if pooled is None and not recorded:
            try:
                self._record(info, replace=False)
                log.info("image %s found in this server's store is now the pool's", name)
            except Conflict:
                pass  # another server took its own copy in first: the next round compares
        elif pooled is None or not same_files(pooled, info):
            if used:
                log.warning("image %s here is no longer the pool's, but VMs name it: kept", name)
                return
            log.info("removing this server's copy of image %s (deleted or replaced pool-wide)", name)
            self._drop_local(name)
            with self._sessions.begin() as session:
                session.execute(delete(ImageCopyRow).where(ImageCopyRow.image == name,
                                                           ImageCopyRow.server == self._server))
        elif not recorded or moved:
            self._record_copy(name)

    def _local(self, name: str) -> ImageInfo | None:
        try:
            return self._store.get_image(name)
        except NotFound:
            return None

    def _drop_local(self, name: str) -> None:
        try:
            self._store.delete_image(name)
        except NotFound:
            pass

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())
