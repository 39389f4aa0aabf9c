"""The VM lifecycle against real QEMU, through the CLI a user types and the API it calls."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import psutil
import pytest

from tests.conftest import Server, qemu_pids, served_through_forward, wait_for
from virtpool.sdk import APIError


def vm_dir(server: Server, name: str):  # type: ignore[no-untyped-def]
    return server.data_dir / "vms" / server.api().vm(name).id


def qemu_pid(server: Server, name: str) -> int:
    return int((vm_dir(server, name) / "qemu.pid").read_text())


def test_create_exec_stop_start_delete_through_the_cli(server: Server) -> None:
    created = server.cli("vm", "create", "life", "--cpus", "1", "--memory", "256M", "--disk", "1G",
                         "--start", "--wait", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["state"] == "running"

    ran = server.cli("vm", "exec", "life", "--", "sh", "-c", "echo out; echo err >&2; hostname; exit 7")
    assert ran.returncode == 7
    assert ran.stdout.splitlines() == ["out", "life"]
    assert ran.stderr.strip() == "err"

    # The guest sees the disk it was given: 1 GiB = 2097152 sectors of 512 bytes.
    sectors = server.cli("vm", "exec", "life", "--", "cat", "/sys/block/vda/size")
    assert sectors.stdout.strip() == "2097152"

    pid = qemu_pid(server, "life")
    stopped = server.cli("vm", "stop", "life", "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["state"] == "stopped"
    assert not _alive(pid)

    started = server.cli("vm", "start", "life")
    assert started.returncode == 0, started.stderr
    assert server.cli("vm", "exec", "life", "--", "true").returncode == 0

    listed = json.loads(server.cli("vm", "list", "--json").stdout)
    assert [(v["name"], v["state"]) for v in listed] == [("life", "running")]

    directory = vm_dir(server, "life")
    assert server.cli("vm", "delete", "life").returncode == 1  # running: refused
    deleted = server.cli("vm", "delete", "life", "--force")
    assert deleted.returncode == 0, deleted.stderr
    assert not directory.exists()
    assert qemu_pids(server.data_dir) == []
    assert server.cli("vm", "show", "life").returncode == 1


def test_exec_reports_a_missing_command_as_127(server: Server) -> None:
    server.api().create_vm("nocmd", start=True)
    assert server.api().wait_vm("nocmd").state == "running"
    ran = server.cli("vm", "exec", "nocmd", "--", "no-such-program")
    assert ran.returncode == 127
    assert "no-such-program" in ran.stderr
    server.api().delete_vm("nocmd", force=True)


def test_pause_resume_restart_and_a_guest_poweroff(server: Server) -> None:
    api = server.api()
    api.create_vm("pr", start=True)
    assert api.wait_vm("pr").state == "running"

    assert server.cli("vm", "pause", "pr").returncode == 0
    assert api.vm("pr").state == "paused"
    refused = server.cli("vm", "exec", "pr", "--", "true")
    assert refused.returncode == 1 and "paused" in refused.stderr
    assert server.cli("vm", "resume", "pr").returncode == 0
    assert api.exec("pr", ["true"]).exit_code == 0

    first_pid = qemu_pid(server, "pr")
    restarted = server.cli("vm", "restart", "pr", "--json")
    assert restarted.returncode == 0, restarted.stderr
    assert json.loads(restarted.stdout)["state"] == "running"
    assert qemu_pid(server, "pr") != first_pid
    uptime = float(api.exec("pr", ["cat", "/proc/uptime"]).stdout.split()[0])
    assert uptime < 30

    # A guest that powers itself off is stopped, not crashed.
    api.exec("pr", ["sh", "-c", "(sleep 0.2; poweroff -f) >/dev/null 2>&1 &"])
    assert wait_for(lambda: api.vm("pr").state == "stopped", timeout=10)
    api.delete_vm("pr")


def test_kill_9_of_qemu_marks_the_vm_crashed_within_2s(server: Server) -> None:
    api = server.api()
    api.create_vm("victim", start=True)
    assert api.wait_vm("victim").state == "running"
    os.kill(qemu_pid(server, "victim"), signal.SIGKILL)
    killed_at = time.monotonic()
    assert wait_for(lambda: api.vm("victim").state == "crashed", timeout=2.0)
    assert time.monotonic() - killed_at <= 2.0
    assert "QEMU exited" in (api.vm("victim").error or "")
    # A crashed VM starts again.
    api.start_vm("victim")
    assert api.wait_vm("victim").state == "running"
    api.delete_vm("victim", force=True)


def test_port_forward_reaches_a_server_in_the_guest(server: Server) -> None:
    port = _free_port()
    api = server.api()
    api.create_vm("web", ports=[f"{port}:8080"], start=True)
    assert api.wait_vm("web").state == "running"
    assert served_through_forward(api, "web", port, "hello-from-guest", timeout=10) == "hello-from-guest\n"
    api.delete_vm("web", force=True)


def test_logs_show_the_serial_console(server: Server) -> None:
    api = server.api()
    api.create_vm("talk", start=True)
    assert api.wait_vm("talk").state == "running"
    logs = server.cli("vm", "logs", "talk")
    assert logs.returncode == 0
    assert "virtpool: ready" in logs.stdout
    api.delete_vm("talk", force=True)


def test_console_over_websocket_runs_commands(server: Server) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    api = server.api()
    api.create_vm("tty", start=True)
    assert api.wait_vm("tty").state == "running"
    url = api.url.replace("http://", "ws://") + "/api/v1/vms/tty/console"
    with connect(url, additional_headers={"Authorization": f"Bearer {api.token}"}) as ws:
        ws.send(b"echo $((6 * 7))-marker\n")
        seen = b""
        deadline = time.monotonic() + 15
        while b"42-marker" not in seen and time.monotonic() < deadline:
            seen += ws.recv(timeout=15)
    assert b"42-marker" in seen
    with pytest.raises(InvalidStatus):
        connect(url, additional_headers={"Authorization": "Bearer wrong"})
    api.delete_vm("tty", force=True)


def test_restart_of_up_keeps_the_vm_running_and_adopts_it(server: Server) -> None:
    api = server.api()
    api.create_vm("survivor", start=True)
    assert api.wait_vm("survivor").state == "running"
    pid = qemu_pid(server, "survivor")

    server.stop()
    assert _alive(pid), "the VM must outlive the platform process"
    server.start()

    api = server.api()
    assert api.vm("survivor").state == "running"
    assert qemu_pid(server, "survivor") == pid
    assert api.exec("survivor", ["echo", "still here"]).stdout == "still here\n"
    # Re-adopted means watched again: a kill is still noticed.
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: api.vm("survivor").state == "crashed", timeout=2.0)
    api.delete_vm("survivor")


def test_vm_that_died_while_up_was_down_is_crashed_after_restart(server: Server) -> None:
    api = server.api()
    api.create_vm("lost", start=True)
    assert api.wait_vm("lost").state == "running"
    pid = qemu_pid(server, "lost")
    server.stop()
    os.kill(pid, signal.SIGKILL)
    server.start()
    vm = server.api().vm("lost")
    assert vm.state == "crashed"
    assert "gone" in (vm.error or "")
    server.api().delete_vm("lost")


def test_unauthenticated_calls_are_refused(server: Server) -> None:
    url = server.api().url
    assert httpx.get(f"{url}/api/v1/vms").status_code == 401
    bad = httpx.get(f"{url}/api/v1/vms", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.headers["content-type"] == "application/problem+json"
    with pytest.raises(APIError) as err:
        type(server.api())(url, "vp_wrong").vms()
    assert err.value.status == 401


def _alive(pid: int) -> bool:
    """Running, as opposed to exited (a zombie waiting for init to reap it has exited)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mutating_requests_are_audited_without_secrets(server: Server) -> None:
    api = server.api()
    api.create_vm("audited")
    refused = server.cli("vm", "start", "nonexistent-vm")
    assert refused.returncode == 1
    httpx.post(f"{api.url}/api/v1/vms/audited/start", headers={"Authorization": "Bearer vp_bogus"})
    api.delete_vm("audited")
    entries = json.loads(server.cli("audit", "list", "--since", "10m", "--json").stdout)
    seen = [(e["actor"], e["action"], e["target"], e["outcome"]) for e in entries]
    assert ("bootstrap-admin", "POST /vms", "audited", "201") in seen
    assert ("bootstrap-admin", "POST /vms/{name}/start", "nonexistent-vm", "404") in seen
    # A refused authentication is counted per address and window, not a row per attempt.
    assert ("anonymous", "POST /vms/{name}/start", "audited", "401") not in seen
    assert any(e["action"] == "auth.failed" and e["target"] == "127.0.0.1"
               and "failed authentications from 127.0.0.1" in e["outcome"] for e in entries)
    assert ("bootstrap-admin", "DELETE /vms/{name}", "audited", "204") in seen
    log = json.dumps(entries)
    assert api.token not in log and "vp_bogus" not in log
