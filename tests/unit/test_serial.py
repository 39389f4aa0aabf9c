"""The serial console log: size cap, reading from an offset, tail for error messages."""

from __future__ import annotations

import os
from pathlib import Path

from virtpool.node.serial import read_from, tail, trim


def lines(count: int, width: int = 10) -> bytes:
    """``count`` numbered lines of exactly ``width`` bytes each (newline included)."""
    return b"".join(f"{i:0{width - 1}d}\n".encode() for i in range(count))


class TestTrim:
    def test_no_op_under_cap(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        content = lines(10)
        log.write_bytes(content)
        assert trim(log, cap=len(content)) is False
        assert log.read_bytes() == content
        assert trim(log, cap=len(content) + 1000) is False
        assert log.read_bytes() == content

    def test_missing_file(self, tmp_path: Path) -> None:
        assert trim(tmp_path / "nope.log", cap=10) is False
        assert not (tmp_path / "nope.log").exists()

    def test_keeps_newest_half_from_a_line_start(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        content = b"".join(f"line {i}\n".encode() for i in range(1000))
        log.write_bytes(content)
        cap = 1001  # odd, so the cut lands mid-line
        assert trim(log, cap=cap) is True
        kept = log.read_bytes()
        assert 0 < len(kept) <= cap // 2
        assert content.endswith(kept)  # the newest bytes, unchanged
        # it starts at the beginning of a line
        start = len(content) - len(kept)
        assert content[start - 1 : start] == b"\n"
        assert kept.startswith(b"line ")
        assert kept.endswith(b"line 999\n")
        # and drops at most one partial line
        assert len(kept) > cap // 2 - len(b"line 999\n")

    def test_exact_numbers(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        log.write_bytes(lines(100))  # 1000 bytes of 10-byte lines
        assert (
            trim(log, cap=205) is True
        )  # keep = 102 bytes: 2 bytes of line 89, lines 90-99
        assert log.read_bytes() == lines(100)[-100:]

    def test_after_trim_under_cap(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        log.write_bytes(lines(5000))
        assert trim(log, cap=4096) is True
        assert log.stat().st_size <= 2048
        assert trim(log, cap=4096) is False

    def test_no_newline_keeps_raw_tail(self, tmp_path: Path) -> None:
        log = tmp_path / "serial.log"
        content = bytes(range(65, 91)) * 100  # no newline at all
        log.write_bytes(content)
        assert trim(log, cap=1000) is True
        assert log.read_bytes() == content[-500:]

    def test_same_file_and_appends_land_at_end(self, tmp_path: Path) -> None:
        """QEMU keeps its O_APPEND descriptor: after a trim its writes go to the new end."""
        log = tmp_path / "serial.log"
        log.write_bytes(lines(500))
        inode = log.stat().st_ino
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            assert trim(log, cap=1000) is True
            os.write(fd, b"after-trim\n")
        finally:
            os.close(fd)
        assert log.stat().st_ino == inode
        data = log.read_bytes()
        assert data.endswith(b"after-trim\n")
        assert b"\0" not in data  # no hole where the old end was
        assert len(data) <= 500 + len(b"after-trim\n")


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
        log.write_bytes(lines(100))
        _, offset = read_from(log, 0, 10_000)
        assert offset == 1000
        assert trim(log, cap=400) is True
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
