"""What an imported file must look like to be taken as a kernel, an initrd or a raw disk.

Pure functions on a file's first bytes (and size). They exist so that an import can never
turn a host file that is none of these (``/etc/shadow``, a private key) into image content
that every VM may read: each kind has a signature, and a file without it is refused.

Raw disks are the hard case: QEMU hands any bytes to a guest as a raw disk. The rule here is
what a bootable root disk always has: a size that is a whole number of 512-byte sectors, and
either a partition table (MBR boot signature, GPT header) or a filesystem superblock that
Linux can mount as root (ext2/3/4, XFS, Btrfs, SquashFS, ISO 9660). A text file, a key or a
blank file has neither; a real disk image always has one. Qcow2 disks are checked by
``node/disks.py``.
"""

from __future__ import annotations

import lzma
import zlib

from virtpool.model.errors import InvalidRequest

SECTOR = 512
# Enough to see every signature below (ISO 9660's sits at 32 KiB + 1, Btrfs's at 64 KiB + 64).
RAW_HEAD_BYTES = 0x10048
INITRD_HEAD_BYTES = 64 * 1024

CPIO_MAGICS = (b"070701", b"070702", b"070707", b"\xc7\x71", b"\x71\xc7")
# Compressions the Linux kernel unpacks an initramfs from.
COMPRESSED_MAGICS = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"\x02\x21\x4c\x18": "lz4",  # the legacy frame the kernel's lz4 unpacker takes
    b"\x04\x22\x4d\x18": "lz4",
    b"BZh": "bzip2",
    b"\x89LZO": "lzo",
    b"\x5d\x00\x00": "lzma",
}
# (offset, bytes, name) of what marks a raw root disk.
RAW_SIGNATURES = (
    (510, b"\x55\xaa", "an MBR partition table"),
    (512, b"EFI PART", "a GPT partition table"),
    (1080, b"\x53\xef", "an ext2/3/4 filesystem"),
    (0, b"XFSB", "an XFS filesystem"),
    (0x10040, b"_BHRfS_M", "a Btrfs filesystem"),
    (0, b"hsqs", "a SquashFS filesystem"),
    (0x8001, b"CD001", "an ISO 9660 filesystem"),
)


def initrd_kind(head: bytes, name: str = "initrd") -> str:
    """'cpio' or the compression of a cpio archive; InvalidRequest for anything else.

    gzip and xz are opened to check that a cpio archive is inside; the other compressions are
    taken on their signature (the standard library has no decoder for them).
    """
    if head.startswith(CPIO_MAGICS):
        return "cpio"
    for magic, kind in COMPRESSED_MAGICS.items():
        if head.startswith(magic):
            inner = _first_bytes(head, kind)
            if inner is not None and not inner.startswith(CPIO_MAGICS):
                raise InvalidRequest(f"{name} is {kind}-compressed but holds no cpio archive",
                                     hint="an initramfs is a cpio archive: find . | cpio -o -H newc | gzip")
            return kind
    raise InvalidRequest(
        f"{name} is not an initramfs (neither a cpio archive nor a compressed one)",
        hint="pass the initrd/initramfs file; an initramfs is made with "
        "find . | cpio -o -H newc | gzip",
    )


def _first_bytes(head: bytes, kind: str) -> bytes | None:
    """The first bytes the compressed ``head`` unpacks to (None: no decoder, or too short)."""
    try:
        if kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 16)
        if kind == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(head, max_length=16)
    except (zlib.error, lzma.LZMAError) as err:
        raise InvalidRequest(f"the initrd is not a valid {kind} stream: {err}",
                             hint="pass an intact initramfs") from err
    return None


def check_raw_disk(head: bytes, size: int, name: str = "disk") -> str:
    """What marks ``head`` (the first bytes of a raw disk of ``size`` bytes) as a disk."""
    if size == 0 or size % SECTOR:
        raise InvalidRequest(
            f"{name} is {size} bytes, not a whole number of 512-byte sectors: it is not a disk image",
            hint="pass a qcow2 disk, or a raw disk image (e.g. made with qemu-img or dd)",
        )
    for offset, magic, what in RAW_SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return what
    raise InvalidRequest(
        f"{name} has neither a partition table nor a filesystem virtpool recognises; "
        "virtpool does not import arbitrary files as raw disks",
        hint="a raw root disk must start with an MBR/GPT partition table or an ext4, XFS, "
        "Btrfs, SquashFS or ISO 9660 filesystem; or convert it to qcow2",
    )
