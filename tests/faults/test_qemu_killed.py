"""QEMU killed in the middle of a call: mid-exec and mid-boot, by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from tests.conftest import VIRTPOOL, Server, qemu_pids, wait_for


def vm_qemu(server: Server, vm_id: str) -> int | None:
    pids = [p for p in qemu_pids(server.data_dir) if f"/vms/{vm_id}/" in " ".join(
        open(f"/proc/{p}/cmdline").read().split("\0"))]
    return pids[0] if pids else None


def test_exec_into_a_vm_whose_qemu_dies_is_a_409_that_says_it_stopped(server: Server) -> None:
    api = server.api()
    api.create_vm("dies-mid-exec", start=True)
    assert api.wait_vm("dies-mid-exec").state == "running"
    pid = vm_qemu(server, api.vm("dies-mid-exec").id)
    assert pid is not None
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    call = threading.Thread(target=lambda: result.setdefault("exec", subprocess.run(
        [VIRTPOOL, "vm", "exec", "dies-mid-exec", "--", "sleep", "60"], env=server.env,
        capture_output=True, text=True, timeout=120)))
    call.start()
    time.sleep(3)  # the command is running in the guest
    os.kill(pid, signal.SIGKILL)
    call.join(timeout=120)
    ran = result["exec"]
    assert ran.returncode == 1, (ran.returncode, ran.stderr)  # refused (409), not a platform failure
    assert "stopped while the command ran" in ran.stderr
    assert "Traceback" not in ran.stderr and "Traceback" not in server.log.read_text()
    assert wait_for(lambda: api.vm("dies-mid-exec").state == "crashed", timeout=30)
    vm_id = api.vm("dies-mid-exec").id
    api.delete_vm("dies-mid-exec")
    assert vm_qemu(server, vm_id) is None
    assert not (server.data_dir / "vms" / vm_id).exists()
    assert "dies-mid-exec" not in [v.name for v in api.vms()]


def test_a_qemu_killed_during_boot_is_reported_as_killed_by_sigkill(server: Server) -> None:
    api = server.api()
    api.create_vm("dies-mid-boot")
    vm_id = api.vm("dies-mid-boot").id
    killed: list[int] = []

    def kill_when_it_appears() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pid = vm_qemu(server, vm_id)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_it_appears)
    killer.start()
    started = server.cli("vm", "start", "dies-mid-boot", "--wait")
    killer.join()
    assert killed, "QEMU never appeared"
    assert started.returncode != 0
    vm = api.wait_vm("dies-mid-boot")
    assert vm.state == "error", vm.state
    assert "killed by signal 9 (SIGKILL)" in (vm.error or ""), vm.error
    assert "Traceback" not in server.log.read_text()
    api.delete_vm("dies-mid-boot")
    assert vm_qemu(server, vm_id) is None
    assert not (server.data_dir / "vms" / vm_id).exists()
