"""An image as the API shows it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Firmware = Literal["bios", "uefi"]
# A disk booted by its firmware runs a whole distribution: its boots take minutes under TCG
# (a Debian 12 guest needed 120-165 s to its agent, QEMU-NOTES.md), not the default image's 3 s.
FIRMWARE_BOOT_TIMEOUT_S = 600.0


class ImageFile(BaseModel):
    path: str
    sha256: str
    size: int


class ImageInfo(BaseModel):
    """A bootable image: a kernel, an optional initramfs, an optional root disk."""

    name: str
    kernel: ImageFile | None = None  # None: a bootable disk that the firmware starts
    initrd: ImageFile | None = None
    disk: ImageFile | None = None
    disk_format: str | None = None
    kernel_args: str = ""
    boot_timeout_s: float | None = None  # how long its guests take to boot (None: the server's)
    machine: str = "microvm"  # "microvm" (direct kernel boot) or "q35" (firmware boot)
    firmware: str | None = None  # on q35: "bios" (SeaBIOS) or "uefi" (OVMF)
    size: int
    created_at: str
    source: dict[str, str] = {}


IMAGE_FILES = ("kernel", "initrd", "disk")


def same_files(a: ImageInfo, b: ImageInfo) -> bool:
    """Whether two copies of an image have the same bytes (by their manifests' SHA-256)."""
    def digests(info: ImageInfo) -> list[str | None]:
        return [f.sha256 if f is not None else None for f in (info.kernel, info.initrd, info.disk)]

    return digests(a) == digests(b)


class BuildStatus(BaseModel):
    """Progress of an image build."""

    name: str
    state: str  # "running", "done", "failed"
    step: str = ""
    progress: float = 0.0
    built: bool = False  # False when the image was already there
    error: str | None = None
