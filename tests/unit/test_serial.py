"""The serial console log: size cap, reading from an offset, tail for error messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtpool.node.safe_files import UnsafeFile
from virtpool.node.serial import BoundedLog, read_from, tail


def lines(count: int, width: int = 10) -> bytes:
    """``count`` numbered lines of exactly ``width`` bytes each (newline included)."""
    return b"".join(f"{i:0{width - 1}d}\n".encode() for i in range(count))


class TestBoundedLog:
    def bounded(self, path: Path, cap: int) -> BoundedLog:
        log = BoundedLog(path, cap)
        log.open()
        return log

    def test_never_passes_the_cap_not_even_between_writes(self, tmp_path: Path) -> None:
        path = tmp_path / "serial.log"
        log = self.bounded(path, 8192)
        content = b"".join(f"line {i}\n".encode() for i in range(20_000))
        for start in range(0, len(content), 777):  # chunks that cut lines anywhere
            log.write(content[start:start + 777])
            assert path.stat().st_size == log.size <= 8192
        kept = path.read_bytes()
        assert content.endswith(kept)  # the newest bytes, unchanged
        assert len(kept) > 4096 - 777

    def test_a_cut_keeps_the_newest_half_from_a_line_start(self, tmp_path: Path) -> None:
        path = tmp_path / "serial.log"
        log = self.bounded(path, 4096)
        content = lines(409)  # 4090 bytes of 10-byte lines
        log.write(content)
        log.write(b"000000409\n")  # passes the cap: cut first, then appended
        kept = path.read_bytes()
        assert kept.endswith(b"000000409\n") and 2048 - 10 < len(kept) <= 2048
        assert (content + b"000000409\n").endswith(kept)
        assert len(kept) % 10 == 0  # whole lines only

    def test_same_file_no_hole_after_a_cut(self, tmp_path: Path) -> None:
        path = tmp_path / "serial.log"
        log = self.bounded(path, 4096)
        inode = path.stat().st_ino
        log.write(lines(500))
        log.write(b"after-cut\n")
        assert path.stat().st_ino == inode
        data = path.read_bytes()
        assert data.endswith(b"after-cut\n") and b"\0" not in data

    def test_a_chunk_bigger_than_the_cap_keeps_its_newest_half(self, tmp_path: Path) -> None:
        path = tmp_path / "serial.log"
        log = self.bounded(path, 4096)
        content = bytes(range(65, 91)) * 1000  # no newline at all
        log.write(content)
        assert path.read_bytes() == content[-2048:]

    def test_an_oversized_log_left_from_before_is_cut_at_open(self, tmp_path: Path) -> None:
        path = tmp_path / "serial.log"
        path.write_bytes(lines(5000))
        log = self.bounded(path, 4096)
        assert path.stat().st_size == log.size <= 2048
        log.write(b"next\n")
        assert path.read_bytes().endswith(b"000004999\nnext\n")

    def test_appends_to_what_is_there(self, tmp_path: Path) -> None:
        path = tmp_path / "serial.log"
        path.write_bytes(b"boot\n")
        self.bounded(path, 4096).write(b"login:\n")
        assert path.read_bytes() == b"boot\nlogin:\n"

    def test_a_planted_symlink_or_fifo_is_refused(self, tmp_path: Path) -> None:
        link = tmp_path / "link.log"
        link.symlink_to(tmp_path / "elsewhere")
        with pytest.raises(UnsafeFile):
            BoundedLog(link, 4096).open()
        assert not (tmp_path / "elsewhere").exists()
        fifo = tmp_path / "fifo.log"
        os.mkfifo(fifo)
        with pytest.raises(UnsafeFile):
            BoundedLog(fifo, 4096).open()

    def test_writes_before_open_or_after_close_are_dropped(self, tmp_path: Path) -> None:
        path = tmp_path / "serial.log"
        log = BoundedLog(path, 4096)
        log.write(b"lost")
        log.open()
        log.close()
        log.write(b"lost too")
        assert path.read_bytes() == b""


class TestReadFrom:
    def test_reads_in_chunks(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        log.write_bytes(b"hello world\n")
        data, offset = read_from(log, 0, 5)
        assert (data, offset) == (b"hello", 5)
        data, offset = read_from(log, offset, 100)
        assert (data, offset) == (b" world\n", 12)
        data, offset = read_from(log, offset, 100)
        assert (data, offset) == (b"", 12)

    def test_picks_up_appended_bytes(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        log.write_bytes(b"boot\n")
        _, offset = read_from(log, 0, 1000)
        with log.open("ab") as handle:
            handle.write(b"login:\n")
        assert read_from(log, offset, 1000) == (b"login:\n", 12)

    def test_missing_file(self, tmp_path: Path) -> None:
        assert read_from(tmp_path / "nope.log", 50, 100) == (b"", 0)

    def test_restarts_at_zero_after_trim(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        log.write_bytes(lines(300))
        _, offset = read_from(log, 0, 10_000)
        assert offset == 3000
        bounded = BoundedLog(log, 4096)
        bounded.open()
        bounded.write(lines(200))  # passes the cap: cut to half of it
        kept = log.read_bytes()
        assert len(kept) < offset
        data, new_offset = read_from(log, offset, 10_000)
        assert data == kept
        assert new_offset == len(kept)

    def test_offset_at_end_is_not_a_restart(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        log.write_bytes(b"abc")
        assert read_from(log, 3, 10) == (b"", 3)

    def test_limit_respected(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        log.write_bytes(b"x" * 1000)
        data, offset = read_from(log, 100, 64)
        assert len(data) == 64
        assert offset == 164


class TestTail:
    def test_last_lines(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        log.write_text("".join(f"line {i}\n" for i in range(50)))
        assert tail(log, 3) == "line 47\nline 48\nline 49"

    def test_fewer_lines_than_asked(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        log.write_text("one\ntwo\n")
        assert tail(log, 20) == "one\ntwo"

    def test_default_is_twenty(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        log.write_text("".join(f"{i}\n" for i in range(100)))
        assert tail(log).splitlines() == [str(i) for i in range(80, 100)]

    def test_missing_file(self, tmp_path: Path) -> None:
        assert tail(tmp_path / "nope.log") == ""

    def test_large_log_reads_only_the_end(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        log.write_bytes(b"x" * 100_000 + b"\nKernel panic - not syncing\n")
        assert tail(log, 1) == "Kernel panic - not syncing"

    def test_binary_garbage_does_not_raise(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        log.write_bytes(b"\xff\xfe\x00boot\n\x80ok\n")
        out = tail(log, 2)
        assert out.endswith("ok")
        assert "boot" in out
