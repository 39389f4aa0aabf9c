"""Disk files: inspection of what users hand us, and creation of each VM's disk.

A VM's disk is always qcow2: copy-on-write over its image's disk when the image has one, else
blank. Image disks are inspected *before* any QEMU tool opens them: a qcow2 header can name a
backing file or an external data file anywhere on the host (``/etc/shadow``, ``/dev/sda``), and
opening it through QEMU would read that file on the user's behalf.
"""

from __future__ import annotations

import json
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtpool.model.errors import InvalidRequest, OperationFailed

QCOW2_MAGIC = b"QFI\xfb"
# Magic numbers of formats QEMU would probe; a "raw" file that starts with one is refused so
# that no tool ever probes it as something else.
OTHER_MAGICS = {
    b"KDMV": "vmdk",
    b"# Disk DescriptorFile": "vmdk descriptor",
    b"conectix": "vpc",
    b"QED\x00": "qed",
    b"<<< ": "vdi",
    b"LUKS\xba\xbe": "luks",
}
HEADER_BYTES = 64 * 1024  # enough for a qcow2 header, its extensions and a backing file name
QCOW2_EXT_DATA_FILE = 0x44415441  # header extension "DATA": an external data file
QCOW2_EXT_END = 0


@dataclass(frozen=True)
class DiskInfo:
    format: str  # "qcow2" or "raw"
    virtual_size: int  # bytes


def sniff_format(path: Path) -> str:
    """'qcow2' or 'raw' from the file's first bytes; any other known format is refused."""
    with path.open("rb") as handle:
        head = handle.read(HEADER_BYTES)
    if head.startswith(QCOW2_MAGIC):
        check_qcow2_header(head)
        return "qcow2"
    for magic, name in OTHER_MAGICS.items():
        if head.startswith(magic):
            raise InvalidRequest(
                f"{path.name} is a {name} image; virtpool takes qcow2 or raw disks",
                hint=f"convert it: qemu-img convert -O qcow2 {path.name} disk.qcow2",
            )
    return "raw"


def check_qcow2_header(data: bytes) -> None:
    """Refuse a qcow2 header that points at any other file. Pure: works on the header bytes.

    Layout from QEMU's docs/interop/qcow2.txt: bytes 8-15 backing file offset, 16-19 its
    length; version 3 headers carry extensions after ``header_length`` (bytes 100-103).
    """
    if len(data) < 72 or not data.startswith(QCOW2_MAGIC):
        raise InvalidRequest("the disk is not a valid qcow2 file (header too short)")
    version = struct.unpack_from(">I", data, 4)[0]
    backing_offset, backing_len = struct.unpack_from(">QI", data, 8)
    if backing_offset or backing_len:
        name = data[backing_offset : backing_offset + backing_len].decode(errors="replace")
        raise InvalidRequest(
            f"the qcow2 disk has a backing file ({name!r}); virtpool refuses disks that point at "
            "other files",
            hint="flatten it first: qemu-img convert -O qcow2 in.qcow2 flat.qcow2",
        )
    if version < 3:
        return
    if len(data) < 104:
        raise InvalidRequest("the disk is not a valid qcow2 file (v3 header too short)")
    incompatible = struct.unpack_from(">Q", data, 72)[0]
    if incompatible & 0b100:  # bit 2: external data file
        raise InvalidRequest(
            "the qcow2 disk keeps its data in an external file; virtpool refuses that",
            hint="convert it: qemu-img convert -O qcow2 in.qcow2 flat.qcow2",
        )
    offset = struct.unpack_from(">I", data, 100)[0]
    while offset + 8 <= len(data):
        ext_type, ext_len = struct.unpack_from(">II", data, offset)
        if ext_type == QCOW2_EXT_END:
            return
        if ext_type == QCOW2_EXT_DATA_FILE:
            raise InvalidRequest("the qcow2 disk names an external data file; virtpool refuses that")
        offset += 8 + ((ext_len + 7) & ~7)


def qemu_img_info(path: Path, fmt: str) -> DiskInfo:
    """Ask qemu-img about a file whose format we already know (it is never probed)."""
    proc = run_qemu_img(["info", "--output=json", "-f", fmt, str(path)], what=f"inspect {path.name}")
    info = json.loads(proc)
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise InvalidRequest(f"{path.name} has a backing file; virtpool refuses it")
    data_file = (info.get("format-specific") or {}).get("data", {}).get("data-file")
    if data_file:
        raise InvalidRequest(f"{path.name} names an external data file; virtpool refuses it")
    return DiskInfo(format=info["format"], virtual_size=int(info["virtual-size"]))


def create_blank(path: Path, size_mib: int) -> None:
    run_qemu_img(["create", "-q", "-f", "qcow2", str(path), f"{size_mib}M"], what="create a disk")


def create_overlay(path: Path, base: Path, base_format: str, size_mib: int) -> None:
    """A qcow2 that reads through to ``base`` and writes only to itself."""
    run_qemu_img(
        ["create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(path), f"{size_mib}M"],
        what="create a disk",
    )


def grow(path: Path, size_mib: int, **run_as: Any) -> None:
    """Grow a VM's (stopped) disk; qemu-img refuses to shrink without --shrink, as we want.

    ``run_as`` (user, group, ...) runs qemu-img as the VM's user: the disk is that user's to
    rewrite, so whatever its header names is opened with no more rights than the VM has.
    """
    run_qemu_img(["resize", "-q", "-f", "qcow2", str(path), f"{size_mib}M"], what="grow the disk", **run_as)


def run_qemu_img(args: list[str], *, what: str, **run_as: Any) -> str:
    """Run qemu-img (as ``run_as``: user, group, ... when given); its stdout, or OperationFailed."""
    try:
        proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False, **run_as)
    except FileNotFoundError as err:
        raise OperationFailed(
            "qemu-img is not installed", hint="run scripts/install-system-packages.sh as root"
        ) from err
    if proc.returncode != 0:
        raise OperationFailed(f"cannot {what}: {proc.stderr.strip()}")
    return proc.stdout
