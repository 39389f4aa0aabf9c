"""Open files that someone else may have planted, without being fooled or stalled.

Root-side code reads and writes files in directories a VM's user can write (its run dir:
``qemu.pid``, ``serial.log``, ``qemu.log``...), and the CLI reads files a user names for an
image import. Either may be a trap: a symlink to ``/etc/shadow``, a hard link to it, a FIFO
that blocks the reader forever, a device, or a file of a terabyte. Every such open goes
through :func:`open_regular`: no link is followed, the open never blocks, and only a regular
file (of one link, for VM dirs) of a bounded size is accepted.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from virtpool.model.errors import OperationFailed

PIDFILE_MAX_BYTES = 64  # "1234567\n" and then some
NOFOLLOW_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeFile(OperationFailed):
    """A file that should be a plain file is a link, a FIFO, a device or far too big."""

    title = "unsafe file"


def describe(mode: int) -> str:
    """What kind of file ``mode`` (from ``stat``) is, in words for a message."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(
    path: Path, flags: int = os.O_RDONLY, *, max_size: int | None = None, single_link: bool = True,
    mode: int = 0o600,
) -> int:
    """A descriptor on ``path`` if it is a regular file (not followed through a symlink).

    The open itself cannot block (``O_NONBLOCK``: a FIFO opens at once and is then refused).
    ``single_link`` refuses a file with other hard links (one planted to point at a host
    file); ``max_size`` refuses one larger than that. Raises :class:`UnsafeFile`, or
    FileNotFoundError when there is nothing at ``path``.
    """
    try:
        fd = os.open(path, flags | NOFOLLOW_FLAGS, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafeFile(f"{path} is a symlink; refusing to follow it",
                             hint="pass the file itself, not a link to it") from err
        if err.errno == errno.ENXIO:  # a FIFO opened for writing with no reader, or a socket
            raise UnsafeFile(f"{path} is {describe(os.lstat(path).st_mode)}; refusing it") from err
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"{path} is {describe(info.st_mode)}, not a regular file; refusing it",
                             hint="pass a regular file")
        if single_link and info.st_nlink > 1:
            raise UnsafeFile(f"{path} has {info.st_nlink} hard links; refusing a file that may be "
                             "another file's alias")
        if max_size is not None and info.st_size > max_size:
            raise UnsafeFile(f"{path} is {info.st_size} bytes, more than the {max_size} it may be")
        # Reads and writes on a regular file never block anyway; clear the flag so that
        # callers get ordinary file semantics.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_plain(path: Path) -> bool:
    """True if ``path`` is absent or a regular file of one link (what QEMU itself leaves)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def read_small(path: Path, max_size: int) -> bytes:
    """The whole content of a small file in a VM-writable dir (at most ``max_size`` bytes)."""
    fd = open_regular(path, os.O_RDONLY, max_size=max_size)
    try:
        return os.read(fd, max_size + 1)[:max_size]
    finally:
        os.close(fd)


def create_new(path: Path, mode: int = 0o600) -> int:
    """A descriptor on a new file at ``path`` for writing (appending); whatever was there is
    removed first, and the create refuses to follow or reuse anything planted meanwhile."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | NOFOLLOW_FLAGS, mode)
