"""Connect to a VM's Unix sockets only if the VM's own QEMU is listening there.

The sockets live in the VM's run dir, which belongs to the VM's user; a QEMU that a guest took
over could replace ``qmp.sock`` with a symlink to another VM's socket (or the host's
``/run/docker.sock``), and the agent, being root, would connect. So the peer at the other end
must run as the owner of the socket's directory: the VM's user (or, unconfined, the agent's).
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
from pathlib import Path

from virtpool.model.errors import OperationFailed
from virtpool.node.safe_files import describe

_UCRED = struct.Struct("3i")  # pid, uid, gid


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
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, str(path))
        listener = peer_uid(sock)
    except BaseException:
        sock.close()
        raise
    if listener != owner:
        sock.close()
        raise OperationFailed(
            f"{path} is served by uid {listener}, not by its VM's user {owner}; refusing it",
            hint="the VM's QEMU may be compromised: stop the VM and inspect its run dir",
        )
    return sock
