"""Unit tests for the pure parts of the default image builder (no apt, no QEMU)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from virtpool.model.errors import OperationFailed
from virtpool.node.images import build
from virtpool.node.images.build import (
    LZ4_LEGACY_MAGIC,
    KernelPayload,
    build_default_image,
    elf_required_size,
    find_lz4_payload,
    parse_apt_show,
    parse_busybox_list,
    parse_kernel_dependency,
    parse_ldd,
)
from virtpool.node.images.manifest import (
    Manifest,
    file_entry,
    read_manifest,
    write_manifest,
)

INIT_SH = Path(build.__file__).with_name("init.sh")


def make_bzimage(
    payload: bytes, *, setup_sects: int = 3, payload_offset: int = 100, decoy: bool = False
) -> bytes:
    """A minimal bzImage: boot sector + setup header, then the protected-mode part."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    struct.pack_into("<II", setup, 0x248, payload_offset, len(payload))
    if decoy:
        setup[0x300:0x304] = LZ4_LEGACY_MAGIC  # the magic also occurs before the payload
    return bytes(setup) + b"\x90" * payload_offset + payload + b"trailer"


def lz4_payload(uncompressed_size: int) -> bytes:
    return LZ4_LEGACY_MAGIC + b"compressed-blocks" + struct.pack("<I", uncompressed_size)


class TestFindLz4Payload:
    def test_uses_setup_header(self) -> None:
        payload = lz4_payload(123456)
        image = make_bzimage(payload, setup_sects=3, payload_offset=100)
        found = find_lz4_payload(image)
        assert found == KernelPayload(
            offset=4 * 512 + 100, length=len(payload), uncompressed_size=123456
        )
        assert image[found.offset : found.offset + found.length] == payload

    def test_header_beats_earlier_magic(self) -> None:
        image = make_bzimage(lz4_payload(99), decoy=True)
        found = find_lz4_payload(image)
        assert found.offset == 4 * 512 + 100
        assert found.uncompressed_size == 99

    def test_zero_setup_sects_means_four(self) -> None:
        payload = lz4_payload(7)
        image = bytearray(make_bzimage(payload, setup_sects=4, payload_offset=0))
        image[0x1F1] = 0
        assert find_lz4_payload(bytes(image)).offset == 5 * 512

    def test_falls_back_to_scanning_without_header(self) -> None:
        image = b"\x00" * 1000 + LZ4_LEGACY_MAGIC + b"data"
        assert find_lz4_payload(image) == KernelPayload(offset=1000)

    def test_falls_back_when_header_points_elsewhere(self) -> None:
        image = bytearray(make_bzimage(lz4_payload(5)))
        struct.pack_into("<I", image, 0x248, 0)  # header now points at the 0x90 padding
        found = find_lz4_payload(bytes(image))
        assert found.length is None
        assert image[found.offset : found.offset + 4] == LZ4_LEGACY_MAGIC

    def test_no_payload(self) -> None:
        with pytest.raises(ValueError, match="LZ4"):
            find_lz4_payload(b"\x00" * 4096)


def make_elf(*, phoff: int = 64, segments: list[tuple[int, int]], shoff: int, shnum: int) -> bytes:
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4] = 2  # 64-bit
    header[5] = 1  # little-endian
    struct.pack_into("<QQ", header, 0x20, phoff, shoff)
    struct.pack_into("<HHHH", header, 0x36, 56, len(segments), 64, shnum)
    table = bytearray(56 * len(segments))
    for index, (offset, filesz) in enumerate(segments):
        struct.pack_into("<Q", table, index * 56 + 0x08, offset)
        struct.pack_into("<Q", table, index * 56 + 0x20, filesz)
    return bytes(header) + b"\x00" * (phoff - 64) + bytes(table)


class TestElfRequiredSize:
    def test_segment_end_dominates(self) -> None:
        head = make_elf(segments=[(0x1000, 0x500), (0x200000, 0x300000)], shoff=0x1000, shnum=2)
        assert elf_required_size(head) == 0x500000

    def test_section_table_dominates(self) -> None:
        head = make_elf(segments=[(0x1000, 0x500)], shoff=0x9000, shnum=10)
        assert elf_required_size(head) == 0x9000 + 10 * 64

    def test_empty_segments_ignored(self) -> None:
        head = make_elf(segments=[(0x100000000, 0)], shoff=0, shnum=0)
        assert elf_required_size(head) == 64 + 56

    def test_not_elf(self) -> None:
        with pytest.raises(ValueError, match="not an ELF"):
            elf_required_size(b"MZ" + b"\x00" * 100)

    def test_32_bit_rejected(self) -> None:
        head = bytearray(make_elf(segments=[], shoff=0, shnum=0))
        head[4] = 1
        with pytest.raises(ValueError, match="64-bit"):
            elf_required_size(bytes(head))

    def test_program_headers_beyond_head(self) -> None:
        head = make_elf(phoff=64, segments=[(0, 10)] * 4, shoff=0, shnum=0)
        with pytest.raises(ValueError, match="beyond"):
            elf_required_size(head[:100])


class TestParsers:
    def test_kernel_dependency(self) -> None:
        text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"
        assert parse_kernel_dependency(text) == "linux-image-6.1.0-56-cloud-amd64"

    def test_kernel_dependency_picks_highest_abi(self) -> None:
        text = (
            "linux-image-cloud-amd64\n"
            "  Depends: linux-image-6.1.0-9-cloud-amd64\n"
            "  Depends: linux-image-6.1.0-56-cloud-amd64\n"
            "  Depends: linux-image-6.1.0-10-cloud-amd64\n"
            "  Recommends: firmware-linux-free\n"
        )
        assert parse_kernel_dependency(text) == "linux-image-6.1.0-56-cloud-amd64"

    def test_kernel_dependency_missing(self) -> None:
        with pytest.raises(ValueError):
            parse_kernel_dependency("linux-image-cloud-amd64\n  Depends: something-else\n")

    def test_apt_show_several_packages(self) -> None:
        text = (
            "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nSHA256: aa\n"
            "Description: stuff\n more description: with colon\n\n"
            "Package: qemu-guest-agent\nVersion: 1:7.2+dfsg-7\nSHA256: bb\n\n"
            "Package: busybox-static\nVersion: 1:1.30\nSHA256: old\n"
        )
        shown = parse_apt_show(text)
        assert shown["busybox-static"]["Version"] == "1:1.35.0-4+deb12u1+b1"
        assert shown["busybox-static"]["SHA256"] == "aa"  # the first (candidate) stanza
        assert "more description" not in shown["busybox-static"]
        assert shown["qemu-guest-agent"]["SHA256"] == "bb"

    def test_apt_show_empty(self) -> None:
        assert parse_apt_show("") == {}

    def test_ldd(self) -> None:
        text = (
            "\tlinux-vdso.so.1 (0x00007ffc)\n"
            "\tlibudev.so.1 => /lib/x86_64-linux-gnu/libudev.so.1 (0x00007f77)\n"
            "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f78)\n"
            "\t/lib64/ld-linux-x86-64.so.2 (0x00007f79)\n"
            "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f78)\n"
        )
        assert parse_ldd(text) == [
            "/lib/x86_64-linux-gnu/libudev.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ]

    def test_ldd_missing_library(self) -> None:
        text = "\tlibglib-2.0.so.0 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"
        with pytest.raises(ValueError, match="libglib-2.0.so.0"):
            parse_ldd(text)

    def test_busybox_list(self) -> None:
        assert parse_busybox_list("bin/ls\n/sbin/ip\n\nusr/bin/../../etc/x\nlinuxrc\n") == [
            "bin/ls",
            "sbin/ip",
            "linuxrc",
        ]


class TestInitScript:
    def test_is_valid_sh(self) -> None:
        subprocess.run(["sh", "-n", str(INIT_SH)], check=True)

    def test_covers_the_contract(self) -> None:
        text = INIT_SH.read_text()
        loop = re.search(r"for module in (.*?); do", text, re.DOTALL)
        assert loop is not None
        assert tuple(loop.group(1).replace("\\\n", " ").split()) == build.GUEST_MODULES
        for needle in (
            "org.qemu.guest_agent.0",
            "/dev/vport0p1",
            "virtpool.hostname=",
            "10.0.2.15/24",
            "10.0.2.2",
            "nameserver 10.0.2.3",
            "/sbin/shutdown",
            "action=poweroff",
            "-f",
            "virtpool: ready",
            "/dev/ttyS0",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        ):
            assert needle in text, needle


def write_image(images: Path, name: str) -> Manifest:
    image = images / name
    image.mkdir(parents=True)
    (image / "vmlinux").write_bytes(b"\x7fELF kernel")
    (image / "initramfs.cpio.gz").write_bytes(b"initrd")
    manifest = Manifest(
        name=name,
        kernel=file_entry(image, "vmlinux"),
        initrd=file_entry(image, "initramfs.cpio.gz"),
    )
    write_manifest(image, manifest)
    return manifest


class TestBuildDefaultImage:
    def test_existing_valid_image_is_returned(self, tmp_path: Path, monkeypatch) -> None:
        written = write_image(tmp_path, "default")
        monkeypatch.setattr(build, "_populate", lambda *a: pytest.fail("must not build"))
        steps: list[tuple[str, float]] = []
        manifest, built = build_default_image(
            tmp_path, progress=lambda step, fraction: steps.append((step, fraction))
        )
        assert (manifest, built) == (written, False)
        assert steps[-1][1] == 1.0

    def test_corrupt_image_is_rebuilt_and_replaced(self, tmp_path: Path, monkeypatch) -> None:
        write_image(tmp_path, "default")
        (tmp_path / "default" / "vmlinux").write_bytes(b"changed")

        def fake_populate(build_dir: Path, name: str, cache: Path, report) -> Manifest:
            assert build_dir.parent == tmp_path and build_dir.name.startswith(".build-default-")
            assert cache == tmp_path / ".debs"
            (build_dir / "vmlinux").write_bytes(b"new kernel")
            manifest = Manifest(name=name, kernel=file_entry(build_dir, "vmlinux"))
            write_manifest(build_dir, manifest)
            return manifest

        monkeypatch.setattr(build, "_populate", fake_populate)
        manifest, built = build_default_image(tmp_path)
        assert built
        assert read_manifest(tmp_path / "default") == manifest
        assert (tmp_path / "default" / "vmlinux").read_bytes() == b"new kernel"
        assert not (tmp_path / "default" / "initramfs.cpio.gz").exists()
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [".debs", "default"]

    def test_failure_leaves_no_partial_image(self, tmp_path: Path, monkeypatch) -> None:
        stale = tmp_path / ".build-default-crashed1"  # left by a killed build
        stale.mkdir()
        other = tmp_path / ".build-default-x-abcd1234"  # a build of image "default-x"
        other.mkdir()

        def failing_populate(build_dir: Path, name: str, cache: Path, report) -> Manifest:
            (build_dir / "vmlinux").write_bytes(b"half")
            raise OperationFailed("download failed", hint="run apt-get update")

        monkeypatch.setattr(build, "_populate", failing_populate)
        with pytest.raises(OperationFailed, match="download failed"):
            build_default_image(tmp_path, cache_dir=tmp_path / "cache")
        assert not (tmp_path / "default").exists()
        assert not stale.exists()
        assert other.exists()
        assert not any(
            p.name.startswith(".build-default-") and p != other for p in tmp_path.iterdir()
        )

    @pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
    def test_bad_names_rejected(self, tmp_path: Path, name: str) -> None:
        with pytest.raises(OperationFailed, match="invalid image name"):
            build_default_image(tmp_path, name)

    def test_missing_tool_is_explained(self) -> None:
        missing = "virtpool-no-such-tool"
        assert shutil.which(missing) is None
        with pytest.raises(OperationFailed, match="not installed") as info:
            build.run_tool([missing], what="do something", hint="install it")
        assert info.value.hint == "install it"
