"""The serial console log: written under a hard size cap, read from an offset.

The agent writes the log itself (QEMU hands the console's bytes to the agent: see
node/console.py), so it is the file's only writer and the cap is exact: before a write that
would pass the cap, the file is cut in place to its newest half (from a line start) and the
write then lands at the new end. A guest that floods its console therefore never makes the
file bigger than the cap, not even for an instant. Readers (`vm logs`) that were further on
than the cut start again at 0.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from virtpool.node.safe_files import UnsafeFile, open_regular

log = logging.getLogger(__name__)

DEFAULT_CAP_BYTES = 2 * 1024 * 1024
MIN_CAP_BYTES = 4096


class BoundedLog:
    """A VM's serial log as the agent writes it: never more than ``cap`` bytes."""

    def __init__(self, path: Path, cap: int = DEFAULT_CAP_BYTES, *, vm: str = "") -> None:
        self._path = path
        self._cap = max(cap, MIN_CAP_BYTES)
        self._vm = vm or path.parent.name
        self._fd: int | None = None
        self._size = 0
        self._failed = False  # a write failed (a full disk): said once, until one works again

    def open(self) -> None:
        """Open (or create) the log to append to. Raises UnsafeFile when the VM's user put
        something else than a plain file there; the caller then logs nothing."""
        self.close()
        fd = open_regular(self._path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        self._fd, self._size = fd, os.fstat(fd).st_size
        if self._size > self._cap:  # left by an older virtpool, or a larger cap before
            self._size = _keep_tail(fd, self._size, self._cap // 2)

    def write(self, data: bytes) -> None:
        """Append ``data``, first cutting the file when it would pass the cap. A write that
        fails (ENOSPC) drops the bytes: the log is a diagnostic, the guest must not wait."""
        if self._fd is None or not data:
            return
        try:
            if self._size + len(data) > self._cap:
                # A cut leaves the newest half of the cap: the old tail, then this chunk (or
                # the newest half of the cap of a chunk bigger than that, alone).
                keep = self._cap // 2
                data = data[-keep:]
                self._size = _keep_tail(self._fd, self._size, keep - len(data))
            written = os.write(self._fd, data)
            self._size += written
            self._failed = False
        except OSError as err:
            # Whatever part made it: the size is read back, so the cap still holds.
            self._size = os.fstat(self._fd).st_size
            if not self._failed:
                self._failed = True
                level = logging.INFO if err.errno == errno.ENOSPC else logging.WARNING
                log.log(level, "serial output of VM %s is not logged for now: %s", self._vm, err.strerror)

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _keep_tail(fd: int, size: int, keep: int) -> int:
    """Cut the file to its newest ``keep`` bytes, from a line start when there is one; in
    place (ftruncate, then the tail written back), so the descriptor stays the file's.
    Returns the new size."""
    os.lseek(fd, max(0, size - keep), os.SEEK_SET)
    tail = os.read(fd, keep)
    newline = tail.find(b"\n")
    if 0 <= newline < len(tail) - 1:
        tail = tail[newline + 1 :]  # start at a whole line
    os.ftruncate(fd, 0)
    os.write(fd, tail)  # O_APPEND: at the (new) end, which is 0
    return len(tail)


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
