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
more than the modes below (run dir 0700, disk 0600, images 0640 and 0750 for the group that
every VM's QEMU holds, ``IMAGE_GID``; 0600 and 0700 when virtpool does not run as root).
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtpool.model.errors import OperationFailed
from virtpool.node.safe_files import describe

VM_ID_BASE = 2_000_000
VM_ID_COUNT = 1_000_000  # VM numbers 0..999_999 in one agent's range

RUN_DIR_MODE = 0o700  # holds the QMP socket, which is full control of the VM
DISK_MODE = 0o600
# Kernels, initrds and base disks are read by every VM's QEMU and by no other host user: they
# belong to root and to one group that each QEMU holds as its only supplementary group.
IMAGE_GID = VM_ID_BASE - 1
IMAGE_FILE_MODE = 0o640
IMAGE_DIR_MODE = 0o750
PRIVATE_FILE_MODE = 0o600  # images when virtpool runs unprivileged (QEMU runs as its user)
PRIVATE_DIR_MODE = 0o700
QEMU_UMASK = 0o177  # sockets (0600), pidfile and logs QEMU creates are its user's alone


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
    """Keyword arguments for ``subprocess.run``/``Popen`` that start a helper as ``uid:gid``.

    The child drops root before exec: setgroups (only the image group; root's would otherwise
    stay), setgid, then setuid; a uid change from 0 clears every capability. The umask makes
    what it creates private to its user.
    """
    return {"user": uid, "group": gid, "extra_groups": [IMAGE_GID], "umask": QEMU_UMASK}


def confined_argv(user: VMUser, argv: list[str]) -> list[str]:
    """``argv`` run as ``user`` with no capability left, not even in the bounding set.

    ``setpriv`` (util-linux) switches the ids and empties the bounding and inheritable sets
    while it is still root, then execs ``argv``: the QEMU that results (same pid) shows CapBnd
    0 and cannot gain a capability back, even through a setuid binary (no_new_privs).
    Popen's own ``user=`` cannot do this: it drops root before any code of ours runs.
    """
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", f"--groups={IMAGE_GID}",
            "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--", *argv]


def _chown(path: Path, user: VMUser, mode: int) -> None:
    # Through a descriptor opened without following links: the directory belongs to the VM's
    # user, who could swap a name for a symlink between a check and a chown by path.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            # A hard link planted in the run dir would hand the host file it aliases over.
            if not (stat.S_ISDIR(info.st_mode) or (stat.S_ISREG(info.st_mode) and info.st_nlink == 1)):
                raise OperationFailed(f"refusing to give {path} to uid {user.uid}: it is "
                                      f"{describe(info.st_mode)} with {info.st_nlink} links",
                                      hint="remove it; virtpool makes the VM's files itself")
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
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            _chown(entry, user, stat.S_IMODE(info.st_mode) & 0o700)
        elif not stat.S_ISDIR(info.st_mode):
            entry.unlink()  # old sockets, links and anything else: QEMU makes its files anew


def own_disk(disk: Path, user: VMUser) -> None:
    """The VM's writable disk: its user's, 0600."""
    if disk.is_symlink():
        raise OperationFailed(f"the disk {disk} is a symlink; refusing to chown what it points to")
    _chown(disk, user, DISK_MODE)


def share_image_root(root: Path) -> None:
    """The images directory: passable by every VM's QEMU (through the image group) alone."""
    _share(root, IMAGE_DIR_MODE if running_as_root() else PRIVATE_DIR_MODE)


def share_image(image_dir: Path) -> None:
    """Let every VM's QEMU read an image, and no other host user: as root, directories 0750
    and files 0640 of root and the image group; unprivileged, 0700 and 0600. Links are not
    followed. Only for an image just built or imported: the files of an existing image may be
    hard links shared with others (a test cache) whose modes are not ours to change."""
    dir_mode, file_mode = ((IMAGE_DIR_MODE, IMAGE_FILE_MODE) if running_as_root()
                           else (PRIVATE_DIR_MODE, PRIVATE_FILE_MODE))
    _share(image_dir, dir_mode)
    for dirpath, dirnames, filenames in os.walk(image_dir):
        for name in dirnames:
            _share(Path(dirpath, name), dir_mode)
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                _share(path, file_mode)


def _share(path: Path, mode: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if running_as_root():
            os.fchown(fd, 0, IMAGE_GID)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


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
