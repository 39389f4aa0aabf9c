"""Connecting to a VM's socket: a busy listener is waited for, a foreign one is refused."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest

from virtpool.model.errors import OperationFailed
from virtpool.node.qemu import peer


def listener(path: Path) -> socket.socket:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(0)
    return srv


def test_a_listener_with_a_full_backlog_is_waited_for_not_called_compromised(tmp_path: Path) -> None:
    srv = listener(tmp_path / "qmp.sock")
    accepted: list[socket.socket] = []

    async def both() -> tuple[socket.socket, socket.socket]:
        first = await peer.connect(tmp_path / "qmp.sock")  # fills the backlog of 0
        # The listener makes room only later, as a busy QEMU does.
        threading.Timer(0.3, lambda: accepted.extend(srv.accept()[0] for _ in range(2))).start()
        second = await peer.connect(tmp_path / "qmp.sock")
        return first, second

    first, second = asyncio.run(both())
    assert peer.peer_uid(second) == os.getuid()
    assert second.getpeername() == str(tmp_path / "qmp.sock")
    for s in (first, second, *accepted, srv):
        s.close()


def test_a_socket_served_by_another_user_is_refused(tmp_path: Path) -> None:
    srv = listener(tmp_path / "qmp.sock")
    os.chown(tmp_path, 12345, 12345)  # the dir's owner (the VM's user) is not who listens
    try:
        with pytest.raises(OperationFailed, match="not by its VM's user 12345"):
            asyncio.run(peer.connect(tmp_path / "qmp.sock"))
    finally:
        os.chown(tmp_path, 0, 0)
        srv.close()
