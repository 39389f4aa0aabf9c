"""The debian-12 recipe's pure parts: the MBR it writes, the mirrors it takes from apt, the
recipe hash the cache compares, and the seed drive the argv adds after the root disk."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.unit.test_argv import make_plan, values_of
from virtpool.node.images import debian
from virtpool.node.qemu.argv import build_argv


def test_partition_table_is_one_bootable_linux_partition() -> None:
    table = debian.partition_table(2048, 2_095_104)
    assert len(table) == 512 - 440 and table[-2:] == b"\x55\xaa"
    entry = table[6:22]
    status, kind = entry[0], entry[4]
    start, sectors = struct.unpack_from("<II", entry, 8)
    assert (status, kind, start, sectors) == (0x80, 0x83, 2048, 2_095_104)
    assert table[22:70] == bytes(48)  # the other three entries are empty


def test_sources_are_the_hosts_apt_files(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("")  # empty: apt reads nothing from it either
    (tmp_path / "sources.list.d" / "debian.sources").write_text("Types: deb\nURIs: http://m/debian\n")
    (tmp_path / "sources.list.d" / "old.list.disabled").write_text("deb http://x/ y main\n")
    assert debian.host_apt_sources(tmp_path) == [tmp_path / "sources.list.d" / "debian.sources"]


def test_recipe_hash_follows_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    before = debian.recipe_sha256()
    assert debian.recipe_sha256() == before
    monkeypatch.setattr(debian, "PACKAGES", (*debian.PACKAGES, "vim"))
    assert debian.recipe_sha256() != before


def test_seed_is_a_read_only_drive_after_the_root_disk() -> None:
    plan = make_plan(kernel=None, initrd=None, machine="q35", firmware="bios",
                     seed=Path("/data/vms/abc123/seed.iso"))
    argv = build_argv(plan)
    drives = values_of(argv, "-drive")
    assert drives[-1] == "file=/data/vms/abc123/seed.iso,format=raw,if=none,id=seed0,readonly=on"
    devices = values_of(argv, "-device")
    assert devices.index("virtio-blk-pci,drive=seed0") > devices.index("virtio-blk-pci,drive=disk0,id=vda,bootindex=0")
    assert "seed0" not in " ".join(build_argv(make_plan()))
