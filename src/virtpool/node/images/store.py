"""The images of one host: ``<data>/images/<name>/``, each with its manifest.

Builds and imports happen in a hidden staging directory next to the images and are renamed into
place only when complete, so an image is either whole or absent.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from virtpool.model.errors import (
    FREE_SPACE_HINT,
    Conflict,
    ImageDamaged,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
)
from virtpool.model.image import FIRMWARE_BOOT_TIMEOUT_S, Firmware
from virtpool.model.spec import NAME_RULE, valid_name
from virtpool.node import disks, safe_files
from virtpool.node.images import checks
from virtpool.node.images.manifest import (
    Manifest,
    file_entry,
    read_manifest,
    sha256_file,
    write_manifest,
)
from virtpool.node.sandbox import users

ELF_MAGIC = b"\x7fELF"
BZIMAGE_MAGIC_OFFSET = 0x202  # "HdrS", the x86 boot protocol header
BZIMAGE_MAGIC = b"HdrS"

Progress = Callable[[str, float], None]


def kernel_kind(path: Path) -> str:
    """'elf' or 'bzimage'; anything else is not a kernel QEMU can boot directly."""
    with path.open("rb") as handle:
        head = handle.read(BZIMAGE_MAGIC_OFFSET + 4)
    if head.startswith(ELF_MAGIC):
        return "elf"
    if head[BZIMAGE_MAGIC_OFFSET:] == BZIMAGE_MAGIC:
        return "bzimage"
    raise InvalidRequest(
        f"{path.name} is not a Linux kernel (neither an ELF vmlinux nor a bzImage)",
        hint="pass the kernel file, e.g. /boot/vmlinuz-… or a vmlinux",
    )


class ImageStore:
    """List, build, import and delete the images under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        users.share_image_root(self.root)

    def path(self, name: str) -> Path:
        _check_name(name)
        return self.root / name

    def list(self) -> list[Manifest]:
        manifests = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            manifest = read_manifest(entry)
            if manifest is not None:
                manifests.append(manifest)
        return manifests

    def get(self, name: str) -> Manifest:
        manifest = read_manifest(self.path(name))
        if manifest is None:
            hint = (
                f"build it: virtpool image build {name}"
                if name in ("default", "debian-12")
                else "see `virtpool image list`, or import one with `virtpool image import`"
            )
            raise NotFound(f"no image named '{name}'", hint=hint)
        return manifest

    def verify(self, name: str) -> list[str]:
        """Files whose checksum no longer matches the manifest (empty when intact)."""
        manifest = self.get(name)
        image_dir = self.path(name)
        return [
            f.path
            for f in manifest.files()
            if not (image_dir / f.path).is_file() or sha256_file(image_dir / f.path) != f.sha256
        ]

    def delete(self, name: str) -> None:
        self.get(name)
        image_dir = self.path(name)
        # Rename first: a crash mid-delete leaves a hidden leftover, never half an image.
        doomed = self.root / f".delete-{name}-{os.getpid()}"
        os.replace(image_dir, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def build(self, name: str = "default", progress: Progress | None = None) -> tuple[Manifest, bool]:
        """Build a built-in image: ``debian-12`` from its own recipe, any other name from the
        default recipe; a no-op when it is already built from the current recipe."""
        from virtpool.node.images.build import build_default_image
        from virtpool.node.images.debian import IMAGE_NAME, build_debian_image

        _check_name(name)
        builder = build_debian_image if name == IMAGE_NAME else build_default_image
        manifest, built = builder(self.root, name, progress=progress)
        if built:
            users.share_image(self.path(name))  # every VM's user reads its image, nobody else
        return manifest, built

    def import_files(
        self,
        name: str,
        *,
        kernel: Path | None,
        initrd: Path | None = None,
        disk: Path | None = None,
        kernel_args: str = "",
        firmware: Firmware | None = None,
        move: bool = False,
    ) -> Manifest:
        """Copy (or move) the user's files in as image ``name``, refusing what is not what it
        claims to be: no link is followed, and each file's content is checked on our own copy
        (so it cannot change between check and use). ENOSPC is :class:`InsufficientStorage`.

        With a kernel it boots directly on microvm; without one the disk must carry its own
        bootloader, which ``firmware`` (default BIOS) starts on q35."""
        _check_name(name)
        if kernel is None and disk is None:
            raise InvalidRequest("an image needs a kernel or a bootable disk",
                                 hint="pass --kernel (and --initrd, --disk), or --disk alone")
        if kernel is not None and firmware is not None:
            raise InvalidRequest("--firmware is for a disk that boots by itself, not with --kernel",
                                 hint="drop --kernel to boot the disk's own bootloader")
        if kernel is None and initrd is not None:
            raise InvalidRequest("an initramfs needs a kernel", hint="pass --kernel too")
        if self.path(name).exists():
            raise Conflict(f"an image named '{name}' exists", hint="delete it first or pick another name")
        staging = Path(tempfile.mkdtemp(prefix=f".import-{name}-", dir=self.root))
        try:
            kind = None
            if kernel is not None:
                _take(kernel, staging / "kernel", move)
                kind = kernel_kind(staging / "kernel")
            if initrd is not None:
                _take(initrd, staging / "initrd", move)
                checks.initrd_kind(_head(staging / "initrd", checks.INITRD_HEAD_BYTES), "the initrd")
            disk_entry, disk_format = None, None
            if disk is not None:
                _take(disk, staging / "disk", move)
                disk_format = disks.sniff_format(staging / "disk")
                if disk_format == "raw":
                    checks.check_raw_disk(_head(staging / "disk", checks.RAW_HEAD_BYTES),
                                          (staging / "disk").stat().st_size, "the disk")
                disks.qemu_img_info(staging / "disk", disk_format)
                disk_entry = file_entry(staging, "disk")
            args = kernel_args
            # A kernel with a disk and no root= mounts its root from that disk.
            if kernel is not None and disk is not None and "root=" not in kernel_args:
                args = f"root=/dev/vda rw {kernel_args}".strip()
            source = {"kind": "import"}
            if kind is not None:
                source["kernel_format"] = kind
            manifest = Manifest(
                name=name,
                kernel=file_entry(staging, "kernel") if kernel is not None else None,
                initrd=file_entry(staging, "initrd") if initrd is not None else None,
                disk=disk_entry,
                disk_format=disk_format,
                kernel_args=args,
                source=source,
                machine="microvm" if kernel is not None else "q35",
                firmware=None if kernel is not None else (firmware or "bios"),
                boot_timeout_s=None if kernel is not None else FIRMWARE_BOOT_TIMEOUT_S,
            )
            write_manifest(staging, manifest)
            users.share_image(staging)  # every VM's user reads its image, nobody else
            os.rename(staging, self.path(name))
            return manifest
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            if err.errno == errno.ENOSPC:
                raise no_room(self.root, f"importing image '{name}'") from err
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def receive(self, manifest: Manifest, files: dict[str, Iterable[bytes]]) -> Manifest:
        """Store an image another store holds (the control plane's), byte for byte: each file
        must have the size and SHA-256 the manifest says, else nothing is kept. An image of that
        name with the same checksums is kept as it is (so: idempotent)."""
        _check_name(manifest.name)
        existing = read_manifest(self.path(manifest.name)) if self.path(manifest.name).exists() else None
        if existing is not None:
            if [(f.path, f.sha256) for f in existing.files()] == [(f.path, f.sha256) for f in manifest.files()]:
                return existing
            raise Conflict(f"image '{manifest.name}' here differs from the pool's",
                           hint="delete it on this host so that the pool's copy is fetched")
        staging = Path(tempfile.mkdtemp(prefix=f".import-{manifest.name}-", dir=self.root))
        try:
            by_field = {"kernel": manifest.kernel, "initrd": manifest.initrd, "disk": manifest.disk}
            for field, entry in by_field.items():
                if entry is None:
                    continue
                if field not in files or "/" in entry.path or entry.path.startswith("."):
                    raise InvalidRequest(f"image '{manifest.name}' lacks its {field} file")
                digest, size = hashlib.sha256(), 0
                with (staging / entry.path).open("wb") as out:
                    for chunk in files[field]:
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                if digest.hexdigest() != entry.sha256 or size != entry.size:
                    raise ImageDamaged(f"the {field} of image '{manifest.name}' arrived damaged "
                                         f"(SHA-256 or size differs from its manifest)",
                                         hint="try again; the image is fetched anew")
            write_manifest(staging, manifest)
            users.share_image(staging)  # every VM's user reads its image, nobody else
            os.rename(staging, self.path(manifest.name))
            return manifest
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def remove_leftovers(self) -> None:
        """Remove staging directories of builds, imports and deletes that never finished."""
        for entry in self.root.iterdir():
            if entry.name.startswith((".import-", ".delete-", ".build-")) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


def _take(source: Path, target: Path, move: bool) -> None:
    """Move our own staged upload, or copy a user's file without following a link to it."""
    if move:
        os.rename(source, target)
        return
    fd = safe_files.open_regular(source, single_link=False)
    with os.fdopen(fd, "rb") as src, open(target, "xb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _head(path: Path, size: int) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def no_room(where: Path, doing: str) -> InsufficientStorage:
    """The error for ENOSPC under the data dir, with what there is to free."""
    free_mib = shutil.disk_usage(where).free // (1024 * 1024)
    return InsufficientStorage(
        f"no space left on the host's data disk while {doing} ({free_mib} MiB free in {where.parent})",
        hint=FREE_SPACE_HINT,
    )


def _check_name(name: str) -> None:
    if not valid_name(name):
        raise InvalidRequest(f"'{name}' is not a valid image name", hint=NAME_RULE)
