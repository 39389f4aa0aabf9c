"""Opening files someone else may have planted: links, FIFOs, devices and huge files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtpool.node.qemu.process import read_pid
from virtpool.node.safe_files import UnsafeFile, open_regular, read_small


def test_a_regular_file_opens(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("1234\n")
    assert read_small(tmp_path / "f", 64) == b"1234\n"


def test_symlinks_fifos_devices_hard_links_and_huge_files_are_refused_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/etc/shadow")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "huge").write_bytes(b"")
    os.truncate(tmp_path / "huge", 1 << 40)
    (tmp_path / "host-file").write_text("secret")
    os.link(tmp_path / "host-file", tmp_path / "alias")
    for name, says in (("link", "symlink"), ("fifo", "FIFO"), ("huge", "more than"), ("alias", "hard links")):
        with pytest.raises(UnsafeFile, match=says):
            read_small(tmp_path / name, 64)
        assert read_pid(tmp_path / name) is None
    with pytest.raises(UnsafeFile, match="character device"):
        open_regular(Path("/dev/null"))
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "absent")
