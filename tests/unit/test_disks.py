"""Disk inspection: qcow2 headers that point at other host files are refused before QEMU opens them."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from virtpool.model.errors import InvalidRequest, OperationFailed
from virtpool.node.disks import (
    QCOW2_EXT_DATA_FILE,
    check_qcow2_header,
    qemu_img_info,
    sniff_format,
)

FEATURE_NAME_TABLE = 0x6803F857
BACKING_FORMAT = 0xE2792ACA


def qcow2_header(
    *,
    version: int = 3,
    backing: bytes = b"",
    incompatible: int = 0,
    extensions: list[tuple[int, bytes]] | None = None,
    pad_to: int = 512,
) -> bytes:
    """A qcow2 header laid out as in QEMU's docs/interop/qcow2.txt."""
    header_length = 72 if version == 2 else 104
    ext_bytes = b""
    for ext_type, payload in extensions or []:
        padded = payload + b"\0" * (-len(payload) % 8)
        ext_bytes += struct.pack(">II", ext_type, len(payload)) + padded
    if version >= 3:
        ext_bytes += struct.pack(">II", 0, 0)  # end of extensions
    backing_offset = header_length + len(ext_bytes) if backing else 0
    head = struct.pack(
        ">4sIQIIQIIQQIIQ",
        b"QFI\xfb",
        version,
        backing_offset,
        len(backing),
        16,  # cluster_bits
        1 << 30,  # virtual size
        0,  # crypt_method
        0,  # l1_size
        0,  # l1_table_offset
        0x10000,  # refcount_table_offset
        1,  # refcount_table_clusters
        0,  # nb_snapshots
        0,  # snapshots_offset
    )
    assert len(head) == 72
    if version >= 3:
        head += struct.pack(">QQQII", incompatible, 0, 0, 4, header_length)
        assert len(head) == 104
    data = head + ext_bytes + backing
    return data + b"\0" * max(0, pad_to - len(data))


def make_backed_qcow2(path: Path) -> None:
    """A qcow2 made by the real qemu-img whose backing file is /etc/hostname."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(path)],
        check=True,
    )


class TestHeaderBuilder:
    """The hand-built header puts each field where qemu-img does."""

    def test_fields_at_qemu_img_offsets(self, tmp_path: Path) -> None:
        path = tmp_path / "made.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True
        )
        real = path.read_bytes()[:104]
        ours = qcow2_header()[:104]
        for offset, fmt in [
            (0, ">4s"),
            (4, ">I"),
            (8, ">Q"),
            (16, ">I"),
            (20, ">I"),
            (24, ">Q"),
            (96, ">I"),
        ]:
            assert struct.unpack_from(fmt, real, offset) == struct.unpack_from(
                fmt, ours, offset
            )
        assert struct.unpack_from(">I", real, 100)[0] >= 104


class TestCheckQcow2Header:
    @pytest.mark.parametrize("version", [2, 3])
    def test_clean_header_passes(self, version: int) -> None:
        check_qcow2_header(qcow2_header(version=version))

    def test_clean_v3_with_harmless_extensions_passes(self) -> None:
        header = qcow2_header(
            extensions=[(BACKING_FORMAT, b"raw"), (FEATURE_NAME_TABLE, b"\0" * 48)]
        )
        check_qcow2_header(header)

    @pytest.mark.parametrize("version", [2, 3])
    def test_backing_file_refused_and_named(self, version: int) -> None:
        header = qcow2_header(version=version, backing=b"/etc/shadow")
        with pytest.raises(InvalidRequest) as caught:
            check_qcow2_header(header)
        assert "/etc/shadow" in caught.value.message
        assert "backing file" in caught.value.message
        assert caught.value.hint is not None and "qemu-img convert" in caught.value.hint

    def test_backing_file_offset_alone_refused(self) -> None:
        header = bytearray(qcow2_header())
        struct.pack_into(">Q", header, 8, 300)  # offset set, length zero
        with pytest.raises(InvalidRequest):
            check_qcow2_header(bytes(header))

    def test_backing_file_beyond_data_still_refused(self) -> None:
        header = bytearray(qcow2_header())
        struct.pack_into(">QI", header, 8, 10**9, 11)
        with pytest.raises(InvalidRequest):
            check_qcow2_header(bytes(header))

    def test_external_data_file_bit_refused(self) -> None:
        header = qcow2_header(incompatible=0b100)
        with pytest.raises(InvalidRequest) as caught:
            check_qcow2_header(header)
        assert "external" in caught.value.message

    def test_other_incompatible_bits_not_mistaken(self) -> None:
        # bit 0 (dirty) and bit 3 (compression type) are not about other files
        check_qcow2_header(qcow2_header(incompatible=0b1001))

    def test_data_extension_refused(self) -> None:
        header = qcow2_header(
            extensions=[(BACKING_FORMAT, b"raw"), (QCOW2_EXT_DATA_FILE, b"/dev/sda")]
        )
        with pytest.raises(InvalidRequest) as caught:
            check_qcow2_header(header)
        assert "external data file" in caught.value.message

    def test_data_extension_after_end_marker_ignored(self) -> None:
        # QEMU stops reading at the end marker, so bytes after it mean nothing.
        header = bytearray(qcow2_header(pad_to=0))
        header += struct.pack(">II", QCOW2_EXT_DATA_FILE, 8) + b"/dev/sda"
        check_qcow2_header(bytes(header))

    def test_v2_ignores_v3_fields(self) -> None:
        # a v2 header ends at byte 72; whatever follows is cluster data, not feature bits
        header = bytearray(qcow2_header(version=2))
        struct.pack_into(">Q", header, 72, 0b100)
        check_qcow2_header(bytes(header))

    @pytest.mark.parametrize(
        "data",
        [b"", b"QFI\xfb", b"QFI\xfb" + b"\0" * 60, b"NOTQ" + b"\0" * 200],
    )
    def test_short_or_wrong_magic_refused(self, data: bytes) -> None:
        with pytest.raises(InvalidRequest):
            check_qcow2_header(data)

    def test_truncated_v3_refused(self) -> None:
        header = qcow2_header(pad_to=0)[:90]
        with pytest.raises(InvalidRequest) as caught:
            check_qcow2_header(header)
        assert "v3" in caught.value.message


class TestSniffFormat:
    def test_raw_passes(self, tmp_path: Path) -> None:
        path = tmp_path / "disk.img"
        path.write_bytes(b"\xeb\x63\x90" + b"\0" * 4093)
        assert sniff_format(path) == "raw"

    def test_empty_file_is_raw(self, tmp_path: Path) -> None:
        path = tmp_path / "empty.img"
        path.write_bytes(b"")
        assert sniff_format(path) == "raw"

    @pytest.mark.parametrize(
        ("magic", "name"),
        [
            (b"KDMV", "vmdk"),
            (b"# Disk DescriptorFile", "vmdk descriptor"),
            (b"conectix", "vpc"),
            (b"QED\x00", "qed"),
            (b"LUKS\xba\xbe", "luks"),
        ],
    )
    def test_other_formats_refused(
        self, tmp_path: Path, magic: bytes, name: str
    ) -> None:
        path = tmp_path / "disk.img"
        path.write_bytes(magic + b"\0" * 1024)
        with pytest.raises(InvalidRequest) as caught:
            sniff_format(path)
        assert f"a {name} image" in caught.value.message
        assert "disk.img" in caught.value.message

    def test_hand_built_clean_qcow2(self, tmp_path: Path) -> None:
        path = tmp_path / "disk.qcow2"
        path.write_bytes(qcow2_header())
        assert sniff_format(path) == "qcow2"

    def test_hand_built_backing_qcow2_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "disk.qcow2"
        path.write_bytes(qcow2_header(backing=b"/etc/shadow"))
        with pytest.raises(InvalidRequest) as caught:
            sniff_format(path)
        assert "/etc/shadow" in caught.value.message

    def test_qemu_img_backing_file_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "x.qcow2"
        make_backed_qcow2(path)
        with pytest.raises(InvalidRequest) as caught:
            sniff_format(path)
        assert "/etc/hostname" in caught.value.message

    def test_qemu_img_data_file_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "x.qcow2"
        data = tmp_path / "x.data"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                f"data_file={data}",
                str(path),
                "1M",
            ],
            check=True,
        )
        with pytest.raises(InvalidRequest) as caught:
            sniff_format(path)
        assert "external" in caught.value.message

    def test_qemu_img_plain_qcow2_passes(self, tmp_path: Path) -> None:
        path = tmp_path / "plain.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True
        )
        assert sniff_format(path) == "qcow2"
        info = qemu_img_info(path, "qcow2")
        assert info.format == "qcow2"
        assert info.virtual_size == 64 * 1024 * 1024

    def test_qemu_img_v2_qcow2_passes(self, tmp_path: Path) -> None:
        path = tmp_path / "old.qcow2"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compat=0.10",
                str(path),
                "1M",
            ],
            check=True,
        )
        assert sniff_format(path) == "qcow2"


class TestQemuImgInfo:
    def test_raw_virtual_size(self, tmp_path: Path) -> None:
        path = tmp_path / "disk.img"
        path.write_bytes(b"\0" * (3 * 1024 * 1024))
        info = qemu_img_info(path, "raw")
        assert info.format == "raw"
        assert info.virtual_size == 3 * 1024 * 1024

    def test_backing_file_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "x.qcow2"
        make_backed_qcow2(path)
        with pytest.raises(InvalidRequest):
            qemu_img_info(path, "qcow2")

    def test_wrong_format_fails(self, tmp_path: Path) -> None:
        path = tmp_path / "disk.img"
        path.write_bytes(b"\0" * 4096)
        with pytest.raises(OperationFailed) as caught:
            qemu_img_info(path, "qcow2")
        assert "disk.img" in caught.value.message
