"""An image as the API shows it."""

from __future__ import annotations

from pydantic import BaseModel


class ImageFile(BaseModel):
    path: str
    sha256: str
    size: int


class ImageInfo(BaseModel):
    """A bootable image: a kernel, an optional initramfs, an optional root disk."""

    name: str
    kernel: ImageFile
    initrd: ImageFile | None = None
    disk: ImageFile | None = None
    disk_format: str | None = None
    kernel_args: str = ""
    boot_timeout_s: float | None = None  # how long its guests take to boot (None: the server's)
    size: int
    created_at: str
    source: dict[str, str] = {}


class BuildStatus(BaseModel):
    """Progress of an image build."""

    name: str
    state: str  # "running", "done", "failed"
    step: str = ""
    progress: float = 0.0
    built: bool = False  # False when the image was already there
    error: str | None = None
