"""Boots wait as long as the VM's boot timeout says, stops say how they ended, and a reboot
from inside the guest reboots the VM, all against real QEMU."""

from __future__ import annotations

import json
import threading
import time

from tests.conftest import Server, qemu_pids, wait_for
from virtpool.sdk import Client
from virtpool.sdk.errors import Conflict


def test_boot_timeout_is_the_vms_own_and_the_cli_waits_for_the_server(server: Server) -> None:
    # A guest that never starts its agent: PID 1 is a long sleep (args after "--" go to init).
    created = server.cli("vm", "create", "sleeper", "--boot-timeout", "15", "--kernel-args",
                         "rdinit=/bin/sleep -- 3600", "--start", "--wait", "--wait-timeout", "1")
    # Not exit 5 ("still waiting" after the CLI's 1 s): the CLI waited for the server's verdict.
    assert created.returncode == 1, created.stderr
    assert "did not answer its guest agent within 15s" in created.stderr
    vm = server.api().vm("sleeper")
    assert vm.state == "error" and vm.boot_timeout_s == 15
    shown = server.cli("vm", "show", "sleeper").stdout
    assert "15s" in shown
    assert server.cli("vm", "delete", "sleeper").returncode == 0

    # Without --boot-timeout a VM takes its image's (none for the default image), else the
    # server's (60 s in these tests).
    server.api().create_vm("plain")
    assert server.api().vm("plain").boot_timeout_s == 60
    server.api().delete_vm("plain")


def test_stop_says_whether_the_guest_agent_or_a_kill_ended_it(server: Server) -> None:
    api = server.api()
    api.create_vm("polite", start=True)
    assert api.wait_vm("polite").state == "running"
    stopped = server.cli("vm", "stop", "polite")
    assert stopped.returncode == 0, stopped.stderr
    assert "VM 'polite' is stopped (shut down through its guest agent)" in stopped.stdout
    assert api.vm("polite").stopped_by == "guest-agent"

    # A guest whose agent refuses to shut down (its shutdown program fails) and which ignores
    # the ACPI power button: the stop falls back to both, then kills, and says so.
    assert server.cli("vm", "start", "polite").returncode == 0
    refuse = api.exec("polite", ["sh", "-c", "printf '#!/bin/sh\\nexit 1\\n' > /sbin/shutdown"])
    assert refuse.exit_code == 0, refuse.stderr
    stubborn = server.cli("vm", "stop", "polite", "--timeout", "8", "--json")
    assert stubborn.returncode == 0, stubborn.stderr
    vm = json.loads(stubborn.stdout)
    assert vm["state"] == "stopped" and vm["stopped_by"] == "killed"
    assert qemu_pids(server.data_dir / "vms" / vm["id"]) == []
    events = [e.message for e in api.events(vm="polite")]
    assert any("killed: the guest did not shut down in time" in m for m in events)
    api.delete_vm("polite")


def test_a_reboot_inside_the_guest_reboots_the_vm_also_after_an_agent_restart(server: Server) -> None:
    api = server.api()
    api.create_vm("again", start=True)
    assert api.wait_vm("again").state == "running"
    vm_dir = server.data_dir / "vms" / api.vm("again").id

    def reboot_and_check(round_: int) -> None:
        first_pid = int((vm_dir / "qemu.pid").read_text())
        wrote = api.exec("again", ["sh", "-c", f"echo kept{round_} > /root/kept; echo gone > /tmp/gone; sync"])
        assert wrote.exit_code == 0, wrote.stderr

        api.exec("again", ["sh", "-c", "(sleep 1; reboot -f) >/dev/null 2>&1 &"])

        def rebooted() -> bool:
            try:
                return int((vm_dir / "qemu.pid").read_text()) != first_pid
            except (OSError, ValueError):
                return False

        assert wait_for(rebooted, timeout=60)
        # The VM stays running through its reboot and its guest comes back: RAM is new, disk kept.
        for _ in range(120):
            try:
                if api.exec("again", ["true"]).exit_code == 0:
                    break
            except Exception:  # the agent is not up yet
                time.sleep(0.5)
        after = api.exec("again", ["sh", "-c", "cat /root/kept; cat /tmp/gone 2>/dev/null || echo fresh"])
        assert after.stdout.split() == [f"kept{round_}", "fresh"]
        assert api.vm("again").state == "running"
        assert len(qemu_pids(vm_dir)) == 1

    reboot_and_check(1)
    # The agent restarts (its QEMUs outlive it and are adopted): the next reboot is still a
    # reboot, not a crash.
    server.stop()
    server.start()
    api = server.api()
    assert api.vm("again").state == "running"
    reboot_and_check(2)
    messages = [e.message for e in api.events(vm="again")]
    assert not any("crash" in m or "exited" in m for m in messages), messages
    api.delete_vm("again", force=True)
    assert not (server.data_dir / "launches" / f"{vm_dir.name}.json").exists()


def test_a_long_exec_does_not_hold_a_stop_off(server: Server) -> None:
    """A stop while a long command runs goes through the guest agent at once (the command and
    the stop share it request by request), and the command ends with its VM, saying so."""
    api = server.api()
    api.create_vm("busyagent", start=True)
    assert api.wait_vm("busyagent").state == "running"
    ended: dict[str, Conflict] = {}

    def run_long() -> None:
        with Client(api.url, api.token, timeout=900) as own:  # one HTTP connection per thread
            try:
                own.exec("busyagent", ["sleep", "600"], timeout=900)
            except Conflict as err:
                ended["error"] = err

    runner = threading.Thread(target=run_long, daemon=True)
    runner.start()
    assert wait_for(lambda: "sleep 600" in server.cli("vm", "exec", "busyagent", "--", "ps").stdout,
                    timeout=120, interval=0.5)
    stopped = server.cli("vm", "stop", "busyagent", "--timeout", "60", "--json")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert json.loads(stopped.stdout)["stopped_by"] == "guest-agent", stopped.stdout
    runner.join(timeout=60)
    assert not runner.is_alive(), "the exec did not end with its VM"
    assert "stopped while the command ran" in str(ended.get("error")), ended
    api.delete_vm("busyagent")
