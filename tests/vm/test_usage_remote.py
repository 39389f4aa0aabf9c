"""The usage history of a VM on a remote host, kept by an agentless `virtpool server`: the
server samples the VM through its host's `virtpool agent` (mutual TLS), stores the samples in
its database, and after a restart of the server the VM's last hour is still there and sampling
goes on. The history of a VM on `virtpool up`'s own agent across a restart is in
tests/browser/test_dashboard.py."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from tests.conftest import JoinedAgent, Server, make_server, passable, qemu_pids, wait_for
from virtpool.control.store.tables import UsageSampleRow

pytestmark = pytest.mark.vm

BOOT_S = 300.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def history(server: Server, vm: str) -> list[dict[str, float]]:
    answer = httpx.get(f"{server.api().url}/api/v1/vms/{vm}/history",
                       headers={"Authorization": f"Bearer {server.api().token}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["points"]


def metric_hosts(server: Server, name: str, vm: str) -> list[str]:
    text = httpx.get(f"{server.api().url}/metrics", headers={"Authorization": f"Bearer {server.api().token}"},
                     timeout=30).text
    return [line.split('host="')[1].split('"')[0] for line in text.splitlines()
            if line.startswith(name + "{") and f'vm="{vm}"' in line]


def test_an_agentless_server_keeps_a_remote_vms_history_across_its_restart(
        tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> None:
    # A fixed agent listener, so that the agent's join URL still works after the restart.
    server = make_server(tmp_path_factory, image_cache, "usage-cp", command="server",
                         extra_args=("--agent-listen", f"127.0.0.1:{free_port()}"))
    data = tmp_path_factory.mktemp("usage-agent")
    passable(data)
    (data / "images").mkdir()
    try:
        agent = JoinedAgent(server, data, "ifh1", "ifr")
    except RuntimeError:
        server.stop()
        raise
    try:
        api = server.api()
        op = api.create_vm("rem1", memory_mib=192, start=True, boot_timeout_s=int(BOOT_S))
        api.wait_operation(op, timeout=BOOT_S)
        vm = api.vm("rem1")
        assert (vm.state, vm.host) == ("running", "ifh1"), vm.error
        points = wait_for(lambda: [p for p in history(server, "rem1") if p.get("cpu_percent") is not None][1:],
                          timeout=60, interval=1)
        assert points, history(server, "rem1")
        assert metric_hosts(server, "virtpool_vm_cpu_seconds_total", "rem1") == ["ifh1"]
        # (The guest agent is asked in the background: its first answer may take a while.)
        assert wait_for(lambda: metric_hosts(server, "virtpool_vm_network_transmit_bytes_total", "rem1"),
                        timeout=60, interval=1) == ["ifh1"]
        before = history(server, "rem1")

        restarted_at = time.time()
        server.stop()
        server.start()
        after = history(server, "rem1")
        assert after[: len(before)] == before  # the hour before the restart is still there
        # ... and the restarted server samples on (through the same remote agent).
        assert wait_for(lambda: [p for p in history(server, "rem1") if p["t"] > restarted_at + 1],
                        timeout=60, interval=1), history(server, "rem1")[-3:]
        api = server.api()
        api.delete_vm("rem1", force=True)
        assert history_rows(server) == 0
    finally:
        # A failed test still removes its VM: a QEMU outlives its agent by design.
        if server.proc is not None:
            for left in server.api().vms(all_projects=True):
                server.api().delete_vm(left.id, force=True)
        agent.stop()
        server.stop()
        # The agent's host guard (its nft table) stays by design while VMs may run; none do now.
        subprocess.run(["nft", "delete", "table", "inet", "ifrguard"], check=False, capture_output=True)
    assert qemu_pids(data) == []


def history_rows(server: Server) -> int:
    """Samples left in the server's database once its VMs are gone (the sweep runs each round)."""
    engine = create_engine(f"sqlite:///{server.data_dir / 'state.db'}")

    def count() -> int:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(UsageSampleRow)) or 0)
    try:
        wait_for(lambda: count() == 0, timeout=30, interval=1)
        return count()
    finally:
        engine.dispose()
