"""Console websockets refused at the handshake, and closed normally, leave no traceback and no
"ASGI callable returned without completing handshake" in the server's log."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import Server, qemu_pids

NOISE = ("Traceback", "ASGI callable returned without completing handshake", "Task exception was never retrieved")


def console_url(server: Server, name: str) -> str:
    return server.api().url.replace("http://", "ws://") + f"/api/v1/vms/{name}/console"


def test_refused_and_closed_consoles_log_no_traceback(server: Server) -> None:
    api = server.api()
    api.create_vm("quiet-console", start=True)
    assert api.wait_vm("quiet-console").state == "running"
    vm_id = api.vm("quiet-console").id
    before = server.log.read_text()
    for headers, name in (({"Authorization": "Bearer wrong"}, "quiet-console"),
                          ({"Authorization": f"Bearer {api.token}"}, "no-such-vm"),
                          ({}, "quiet-console")):
        with pytest.raises(InvalidStatus):
            connect(console_url(server, name), additional_headers=headers, open_timeout=30)
    # A normal session: open, type, close.
    with connect(console_url(server, "quiet-console"),
                 additional_headers={"Authorization": f"Bearer {api.token}"}, open_timeout=30) as ws:
        ws.send(b"\r")
    api.stop_vm("quiet-console")
    api.wait_vm("quiet-console")
    with pytest.raises(InvalidStatus):  # a stopped VM: refused with 409
        connect(console_url(server, "quiet-console"),
                additional_headers={"Authorization": f"Bearer {api.token}"}, open_timeout=30)
    api.delete_vm("quiet-console")
    logged = server.log.read_text()[len(before):]
    for noise in NOISE:
        assert noise not in logged, logged[-3000:]
    # Left behind: nothing of the VM (the consoles held no QEMU, file or row).
    assert "quiet-console" not in [v.name for v in api.vms()]
    assert not (server.data_dir / "vms" / vm_id).exists()
    assert qemu_pids(server.data_dir / "vms" / vm_id) == []
