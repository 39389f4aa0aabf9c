"""The serial console log: read from an offset, and keep it under a size cap.

QEMU appends to the log (``logappend=on``) and holds it open. Trimming therefore rewrites the
file in place (keep the newest half, truncate, append it back) rather than replacing it: QEMU's
descriptor keeps pointing at the same file, and with O_APPEND its next write lands at the new
end. Bytes QEMU writes during the few microseconds of a trim may be lost; the log is a
diagnostic, not a record.
"""

from __future__ import annotations

import os
from pathlib import Path

from virtpool.node.safe_files import UnsafeFile, open_regular

DEFAULT_CAP_BYTES = 2 * 1024 * 1024


def trim(path: Path, cap: int = DEFAULT_CAP_BYTES) -> bool:
    """Keep the newest ``cap // 2`` bytes when the log is over ``cap``; True if trimmed."""
    try:
        fd = open_regular(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    size = os.fstat(fd).st_size
    if size <= cap:
        os.close(fd)
        return False
    keep = cap // 2
    try:
        os.lseek(fd, size - keep, os.SEEK_SET)
        tail = os.read(fd, keep)
        newline = tail.find(b"\n")
        if 0 <= newline < len(tail) - 1:
            tail = tail[newline + 1 :]  # start at a whole line
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, tail)
    finally:
        os.close(fd)
    return True


def read_from(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    """Bytes from ``offset`` (at most ``limit``) and the next offset.

    If the log was trimmed below ``offset`` since the last read, reading restarts at 0.
    """
    try:
        with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if offset > size:
                offset = 0
            handle.seek(offset)
            data = handle.read(limit)
    except FileNotFoundError:
        return b"", 0
    return data, offset + len(data)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines, for error messages."""
    try:
        with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 8192))
            data = handle.read()
    except FileNotFoundError:
        return ""
    except UnsafeFile as err:  # planted by the VM's user; the message still gets written
        return f"({err.message})"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
