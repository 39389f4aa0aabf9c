"""A real VM's QEMU holds no capability, not even in the bounding set, and the
sockets in its run dir are 0600 in a 0700 dir, as the README says."""

from __future__ import annotations

import stat
from pathlib import Path

import psutil

from tests.conftest import Server, qemu_pids


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_qemu_has_an_empty_bounding_set_and_private_sockets(server: Server) -> None:
    api = server.api()
    api.create_vm("capless", start=True)
    try:
        assert api.wait_vm("capless").state == "running"
        vm_id = api.vm("capless").id
        run_dir = server.data_dir / "vms" / vm_id
        qemu = [p for p in qemu_pids(server.data_dir) if f"/vms/{vm_id}/" in " ".join(psutil.Process(p).cmdline())]
        assert len(qemu) == 1
        for pid in qemu:
            info = status(pid)
            assert info["CapBnd"] == "0000000000000000", (pid, info["CapBnd"])
            assert info["CapEff"] == info["CapPrm"] == info["CapInh"] == "0000000000000000"
            assert info["NoNewPrivs"] == "1"
            assert info["Uid"].split()[0] != "0"
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        sockets = [p for p in run_dir.iterdir() if stat.S_ISSOCK(p.lstat().st_mode)]
        assert {"qmp.sock", "qga.sock", "console.sock"} <= {p.name for p in sockets}
        for sock in sockets:
            assert stat.S_IMODE(sock.lstat().st_mode) == 0o600, sock
    finally:
        api.delete_vm("capless", force=True)
    assert not (server.data_dir / "vms" / vm_id).exists()
    assert qemu_pids(server.data_dir / "vms" / vm_id) == []
