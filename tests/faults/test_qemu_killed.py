"""QEMU killed in the middle of a call: mid-exec and mid-boot, by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from tests.conftest import VIRTPOOL, Server, qemu_pids, wait_for
from tests.vm import exec_streams
from virtpool.sdk import Client
from virtpool.sdk.errors import Conflict


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
    # Running in the guest: seen by a second exec alongside.
    assert wait_for(lambda: "sleep 60" in server.cli("vm", "exec", "dies-mid-exec", "--", "ps").stdout,
                    timeout=120, interval=0.5)
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


def test_concurrent_execs_into_a_vm_whose_qemu_dies_each_say_it_stopped_and_exec_works_after_a_start(
        server: Server) -> None:
    api = server.api()
    api.create_vm("dies-busy", start=True)
    assert api.wait_vm("dies-busy").state == "running"
    pid = vm_qemu(server, api.vm("dies-busy").id)
    assert pid is not None
    # Two streamed execs (one with piped input) and one captured, all running at once.
    streams = [subprocess.Popen([VIRTPOOL, "vm", "exec", "dies-busy", "--timeout", "600", "--", "sh", "-c",
                                 f"echo started; sleep 60{i}"], env=server.env, stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for i, stdin in enumerate((subprocess.DEVNULL, subprocess.PIPE))]
    captured: dict[str, Conflict] = {}

    def run_captured() -> None:
        # A client of its own: one HTTP connection serves one thread.
        with Client(api.url, api.token, timeout=600) as own:
            try:
                own.exec("dies-busy", ["sleep", "609"], timeout=600)
            except Conflict as err:
                captured["error"] = err

    call = threading.Thread(target=run_captured)
    call.start()
    try:
        for proc in streams:
            assert exec_streams.line(proc) == b"started\n"
        assert wait_for(lambda: "sleep 609" in server.cli("vm", "exec", "dies-busy", "--", "ps").stdout,
                        timeout=120, interval=0.5)
        os.kill(pid, signal.SIGKILL)
        ended = [proc.communicate(timeout=120) for proc in streams]
        call.join(timeout=120)
    finally:
        for proc in streams:
            if proc.poll() is None:
                proc.kill()
    for (_, err), proc in zip(ended, streams):
        assert proc.returncode == 1, (proc.returncode, err)  # refused (409), not a platform failure
        assert b"stopped while the command ran" in err, err
    assert not call.is_alive() and "stopped while the command ran" in str(captured.get("error")), captured
    assert "Traceback" not in server.log.read_text()
    assert wait_for(lambda: api.vm("dies-busy").state == "crashed", timeout=30)
    api.start_vm("dies-busy")
    assert api.wait_vm("dies-busy").state == "running"
    again = server.cli("vm", "exec", "dies-busy", "--", "echo", "back")
    assert (again.stdout, again.returncode) == ("back\n", 0), again.stderr
    api.delete_vm("dies-busy", force=True)


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
