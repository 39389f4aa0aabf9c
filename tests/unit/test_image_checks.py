"""What an imported initrd or raw disk must look like (pure checks on their first bytes)."""

from __future__ import annotations

import gzip
import lzma

import pytest

from virtpool.model.errors import InvalidRequest
from virtpool.node.images.checks import check_raw_disk, initrd_kind

CPIO = b"070701" + b"0" * 100
SHADOW = b"root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"


def test_an_initrd_is_a_cpio_archive_plain_or_compressed() -> None:
    assert initrd_kind(CPIO) == "cpio"
    assert initrd_kind(gzip.compress(CPIO)) == "gzip"
    assert initrd_kind(lzma.compress(CPIO, format=lzma.FORMAT_XZ)) == "xz"
    assert initrd_kind(b"\x28\xb5\x2f\xfd" + b"\0" * 20) == "zstd"
    assert initrd_kind(b"\x02\x21\x4c\x18" + b"\0" * 20) == "lz4"


@pytest.mark.parametrize("data", [SHADOW, b"", gzip.compress(SHADOW, mtime=0), lzma.compress(SHADOW, format=lzma.FORMAT_XZ)],
                         ids=["text", "empty", "gzip-text", "xz-text"])
def test_anything_else_is_not_an_initrd(data: bytes) -> None:
    with pytest.raises(InvalidRequest, match="cpio"):
        initrd_kind(data)


def test_a_raw_disk_has_whole_sectors_and_a_partition_table_or_filesystem() -> None:
    disk = bytearray(1 << 20)
    disk[510:512] = b"\x55\xaa"
    assert "MBR" in check_raw_disk(bytes(disk[:0x10048]), len(disk))
    disk = bytearray(1 << 20)
    disk[1080:1082] = b"\x53\xef"
    assert "ext" in check_raw_disk(bytes(disk[:0x10048]), len(disk))


@pytest.mark.parametrize("data", [SHADOW, SHADOW.ljust(4096, b"\n"), bytes(4096)], ids=["text", "padded", "blank"])
def test_a_secret_or_a_blank_file_is_not_a_raw_disk(data: bytes) -> None:
    with pytest.raises(InvalidRequest):
        check_raw_disk(data, len(data))
