"""Connect to a VM's Unix sockets only if the VM's own QEMU is listening there.

The sockets live in the VM's run dir, which belongs to the VM's user; a QEMU that a guest took
over could replace ``qmp.sock`` with a symlink to another VM's socket (or the host's
``/run/docker.sock``), and the agent, being root, would connect. So the peer at the other end
must run as the owner of the socket's directory: the VM's user (or, unconfined, the agent's).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import struct
from pathlib import Path

from virtpool.model.errors import OperationFailed
from virtpool.node.safe_files import describe

_UCRED = struct.Struct("3i")  # pid, uid, gid
BACKLOG_WAIT_S = 30.0  # how long a busy QEMU (its listen backlog full) may take to make room


async def _connected(path: Path) -> socket.socket:
    """A socket connected to ``path``. A Unix listener whose backlog is full makes a
    non-blocking connect fail with EAGAIN, which asyncio takes for "in progress" and then for
    success: the socket is left unconnected (its peer reads as uid -1). That is a busy QEMU, not
    a compromised one, so wait for room, briefly."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BACKLOG_WAIT_S
    delay = 0.02
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, str(path))
            sock.getpeername()
            return sock
        except OSError as err:
            sock.close()
            if err.errno != errno.ENOTCONN:
                raise
            if loop.time() + delay > deadline:
                raise OperationFailed(
                    f"{path} accepted no connection for {BACKLOG_WAIT_S:.0f} s: its QEMU is busy",
                    hint="retry; if it persists, see the VM's console with `virtpool vm logs`",
                ) from err
        except BaseException:
            sock.close()
            raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


def peer_uid(sock: socket.socket) -> int:
    _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return uid


async def connect(path: Path) -> socket.socket:
    """A connected socket to ``path`` whose listener is the owner of ``path``'s directory."""
    owner = os.stat(path.parent).st_uid
    kind = os.lstat(path).st_mode
    if not stat.S_ISSOCK(kind):  # a symlink or a FIFO planted in its place: never connect
        raise OperationFailed(f"{path} is {describe(kind)}, not a socket; refusing it",
                              hint="the VM's QEMU may be compromised: stop the VM and inspect its run dir")
    sock = await _connected(path)
    listener = peer_uid(sock)
    if listener != owner:
        sock.close()
        raise OperationFailed(
            f"{path} is served by uid {listener}, not by its VM's user {owner}; refusing it",
            hint="the VM's QEMU may be compromised: stop the VM and inspect its run dir",
        )
    return sock
