"""The image half of the agent contract over one image store: what `virtpool server` holds as
the pool's image store (no agent on that host), and what each ``LocalAgent`` serves of its own.
"""

from __future__ import annotations

import errno
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from virtpool.model.agent import ByteStream, Progress
from virtpool.model.errors import InvalidRequest, NotFound
from virtpool.model.image import IMAGE_FILES, Firmware, ImageFile, ImageInfo
from virtpool.model.spec import KERNEL_ARGS_RULE, kernel_args_ok
from virtpool.node.images.manifest import FileEntry, Manifest
from virtpool.node.images.store import ImageStore, no_room

CHUNK = 1 << 20


class ImageCatalog:
    def __init__(self, root: Path) -> None:
        self.store = ImageStore(root)
        self.store.remove_leftovers()

    def list_images(self) -> list[ImageInfo]:
        return [image_info(m) for m in self.store.list()]

    def get_image(self, name: str) -> ImageInfo:
        return image_info(self.store.get(name))

    def build_image(self, name: str, progress: Progress | None = None) -> tuple[ImageInfo, bool]:
        manifest, built = self.store.build(name, progress)
        return image_info(manifest), built

    def import_image(self, name: str, files: Mapping[str, ByteStream], *, kernel_args: str,
                     firmware: Firmware | None = None) -> ImageInfo:
        if not kernel_args_ok(kernel_args):
            raise InvalidRequest(f"kernel_args: {KERNEL_ARGS_RULE}, and these are not",
                                 hint="remove newlines and other control characters, as for vm create")
        unknown = set(files) - set(IMAGE_FILES)
        if unknown:
            raise InvalidRequest(f"an image is a kernel, an initrd and a disk, not {sorted(unknown)}",
                                 hint="send 'kernel', 'initrd' and 'disk' (each optional: see image import)")
        try:
            staging = Path(tempfile.mkdtemp(prefix=".import-upload-", dir=self.store.root))
        except OSError as err:
            raise _no_room(err, self.store.root, name) from err
        try:
            saved: dict[str, Path] = {}
            for field, stream in files.items():
                target = staging / field
                with target.open("wb") as out:
                    for chunk in stream:
                        out.write(chunk)
                saved[field] = target
            manifest = self.store.import_files(
                name, kernel=saved.get("kernel"), initrd=saved.get("initrd"), disk=saved.get("disk"),
                kernel_args=kernel_args, firmware=firmware, move=True)
            return image_info(manifest)
        except OSError as err:
            raise _no_room(err, self.store.root, name) from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def receive_image(self, info: ImageInfo, files: Mapping[str, ByteStream]) -> ImageInfo:
        return image_info(self.store.receive(manifest_of(info), dict(files)))

    def image_file(self, name: str, file: str) -> Iterator[bytes]:
        manifest = self.store.get(name)
        entry = getattr(manifest, file, None) if file in IMAGE_FILES else None
        if entry is None:
            raise NotFound(f"image '{name}' has no {file} file", hint=f"its files: {', '.join(IMAGE_FILES)}")
        return _chunks(self.store.path(name) / entry.path)

    def delete_image(self, name: str) -> None:
        self.store.delete(name)


def _no_room(err: OSError, root: Path, name: str) -> Exception:
    """ENOSPC while an upload is received: InsufficientStorage (507); anything else as is."""
    return no_room(root, f"importing image '{name}'") if err.errno == errno.ENOSPC else err


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def image_info(manifest: Manifest) -> ImageInfo:
    def entry(f: Any) -> ImageFile | None:
        return ImageFile(path=f.path, sha256=f.sha256, size=f.size) if f else None

    return ImageInfo(
        name=manifest.name, kernel=entry(manifest.kernel), machine=manifest.machine,
        firmware=manifest.firmware, initrd=entry(manifest.initrd),
        disk=entry(manifest.disk), disk_format=manifest.disk_format, kernel_args=manifest.kernel_args,
        boot_timeout_s=manifest.boot_timeout_s, size=manifest.size(), created_at=manifest.created_at,
        source=manifest.source,
    )


def manifest_of(info: ImageInfo) -> Manifest:
    def entry(f: ImageFile | None) -> FileEntry | None:
        return FileEntry(path=f.path, sha256=f.sha256, size=f.size) if f else None

    return Manifest(name=info.name, kernel=entry(info.kernel), initrd=entry(info.initrd), disk=entry(info.disk),
                    machine=info.machine, firmware=info.firmware,  # type: ignore[arg-type]
                    disk_format=info.disk_format, kernel_args=info.kernel_args,
                    boot_timeout_s=info.boot_timeout_s, source=dict(info.source), created_at=info.created_at)
