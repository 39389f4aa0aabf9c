"""An image on disk: ``images/<name>/manifest.json`` and the files it names.

The manifest is the only thing that makes a directory an image: a directory without a
manifest is a build or import that did not finish, and is never offered to a VM.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class FileEntry:
    """One file of an image and its checksum."""

    path: str  # relative to the image directory
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What an image is made of and how to boot it."""

    name: str
    kernel: FileEntry | None  # None: a bootable disk that the firmware starts
    initrd: FileEntry | None = None
    disk: FileEntry | None = None
    disk_format: str | None = None  # "qcow2" or "raw" when disk is set
    kernel_args: str = ""  # image-specific arguments, appended after virtpool's own
    boot_timeout_s: float | None = None  # what a boot of it may take; None: the server's default
    machine: str = "microvm"  # "microvm" (direct kernel boot) or "q35" (firmware boot)
    firmware: str | None = None  # on q35: "bios" (SeaBIOS) or "uefi" (OVMF)
    source: dict[str, str] = field(default_factory=dict)  # where the files came from
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    version: int = MANIFEST_VERSION

    def files(self) -> list[FileEntry]:
        return [f for f in (self.kernel, self.initrd, self.disk) if f is not None]

    def size(self) -> int:
        return sum(f.size for f in self.files())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)

        def entry(value: dict | None) -> FileEntry | None:
            return FileEntry(**value) if value else None

        return cls(
            name=raw["name"],
            kernel=entry(raw.get("kernel")),
            initrd=entry(raw.get("initrd")),
            disk=entry(raw.get("disk")),
            disk_format=raw.get("disk_format"),
            kernel_args=raw.get("kernel_args", ""),
            boot_timeout_s=raw.get("boot_timeout_s"),
            machine=raw.get("machine", "microvm"),
            firmware=raw.get("firmware"),
            source=raw.get("source", {}),
            created_at=raw["created_at"],
            version=raw.get("version", MANIFEST_VERSION),
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(image_dir: Path, relative: str) -> FileEntry:
    """Checksum a file already inside ``image_dir``."""
    path = image_dir / relative
    return FileEntry(path=relative, sha256=sha256_file(path), size=path.stat().st_size)


def write_manifest(image_dir: Path, manifest: Manifest) -> None:
    """Write the manifest atomically: it appears whole or not at all."""
    tmp = image_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(manifest.to_json())
    os.replace(tmp, image_dir / MANIFEST_NAME)


def read_manifest(image_dir: Path) -> Manifest | None:
    path = image_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    return Manifest.from_json(path.read_text())
