"""One unprivileged uid/gid per VM, for the QEMU of that VM when virtpool runs as root.

A QEMU broken into by its guest then holds only that user's rights: it can write its own disk
and run dir, read the (world-readable) images, and nothing of another VM.

Numbering: VM number ``n`` (a small per-VM index that the control plane stores and hands in)
runs as uid = gid = the first uid of the agent's range + ``n``, for n in 0..999_999; each agent
on a host claims a range of its own (``uid_ranges.py``), from ``VM_ID_BASE`` = 2_000_000 up.
The ids sit above the ids a Debian/systemd host hands out itself (system < 1000, users < 60000,
systemd's dynamic users 61184..65519, container-uid ranges of /etc/subuid commonly from
100000 for 65536 ids each) and below 2^31. No /etc/passwd entry is made: the kernel needs
only numbers, and QEMU does not look itself up. An index may be reused once the VM it
belonged to is deleted (its files are gone with it).

What this module must never do: change a file outside the paths handed in, or give any file
more than the modes below (run dir 0700, disk 0600, images 0644 and 0755).
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtpool.model.errors import OperationFailed

VM_ID_BASE = 2_000_000
VM_ID_COUNT = 1_000_000  # VM numbers 0..999_999 in one agent's range

RUN_DIR_MODE = 0o700  # holds the QMP socket, which is full control of the VM
DISK_MODE = 0o600
IMAGE_FILE_MODE = 0o644  # kernels, initrds and base disks are read by every VM's user
IMAGE_DIR_MODE = 0o755
QEMU_UMASK = 0o077  # sockets, pidfile and logs QEMU creates are its user's alone


@dataclass(frozen=True)
class VMUser:
    """The uid and gid one VM's QEMU runs as."""

    uid: int
    gid: int


def running_as_root() -> bool:
    return os.geteuid() == 0


def check_unclaimed(user: VMUser) -> None:
    """OperationFailed if the host's user database already gives this uid to someone."""
    try:
        entry = pwd.getpwuid(user.uid)
    except KeyError:
        return
    raise OperationFailed(
        f"uid {user.uid}, meant for a VM, belongs to the host user '{entry.pw_name}'",
        hint=f"move that user out of virtpool's ids (from {VM_ID_BASE} up to 2**31)",
    )


def spawn_kwargs(uid: int, gid: int) -> dict[str, Any]:
    """Keyword arguments for ``subprocess.run``/``Popen`` that start QEMU as ``uid:gid``.

    The child drops root before exec: setgroups([]) (no supplementary groups; root's would
    otherwise stay), setgid, then setuid; a uid change from 0 clears every capability. The
    umask makes what QEMU creates (sockets, pidfile, logs) private to its user.
    """
    return {"user": uid, "group": gid, "extra_groups": [], "umask": QEMU_UMASK}


def _chown(path: Path, user: VMUser, mode: int) -> None:
    # Through a descriptor opened without following links: the directory belongs to the VM's
    # user, who could swap a name for a symlink between a check and a chown by path.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.fchown(fd, user.uid, user.gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    except FileNotFoundError as err:
        raise OperationFailed(f"cannot give {path} to uid {user.uid}: it does not exist") from err
    except PermissionError as err:
        raise OperationFailed(
            f"cannot give {path} to uid {user.uid}: permission denied",
            hint="only root can run VMs as their own users",
        ) from err


def own_run_dir(run_dir: Path, user: VMUser) -> None:
    """Give the VM's run dir (0700) and the regular files already in it to its user.

    Files keep their modes except that nobody but the owner may read them; files left by a
    QEMU that ran as root (serial.log, ...) become writable by the new user this way. Symlinks
    are not followed.
    """
    _chown(run_dir, user, RUN_DIR_MODE)
    for entry in run_dir.iterdir():
        info = entry.lstat()
        if stat.S_ISREG(info.st_mode):
            _chown(entry, user, stat.S_IMODE(info.st_mode) & 0o700)
        elif not stat.S_ISDIR(info.st_mode):
            entry.unlink()  # old sockets and anything else: QEMU makes its sockets anew


def own_disk(disk: Path, user: VMUser) -> None:
    """The VM's writable disk: its user's, 0600."""
    if disk.is_symlink():
        raise OperationFailed(f"the disk {disk} is a symlink; refusing to chown what it points to")
    _chown(disk, user, DISK_MODE)


def make_readable(image_dir: Path) -> None:
    """Let every VM user read an image: directories 0755, files 0644 (owner unchanged)."""
    os.chmod(image_dir, IMAGE_DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(image_dir):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), IMAGE_DIR_MODE)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, IMAGE_FILE_MODE)


def check_reachable(path: Path, user: VMUser) -> None:
    """OperationFailed naming the first directory above ``path`` that ``user`` cannot enter.

    A VM user reaches its run dir and the images through every directory above them, so each
    one it does not own needs the execute bit for others (0711 is enough: it lets VM users
    pass through without listing the directory).
    """
    for directory in reversed(path.resolve().parents):
        info = os.stat(directory)
        if info.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif info.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            raise OperationFailed(
                f"the user {user.uid} of a VM cannot reach {path}: it may not enter {directory} "
                f"(mode {stat.S_IMODE(info.st_mode):04o}, owner {info.st_uid})",
                hint=f"chmod o+x {directory} (0711 lets VM users pass through without listing it)",
            )
