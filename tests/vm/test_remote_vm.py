"""A VM on a remote host, as its user drives it: a real `virtpool server` with no agent of its own
and a real `virtpool agent` joined to it over mutual TLS; the CLI talks to the server only. Exec
output streams back and piped input streams in while the command runs, and snapshots, backups (read and restored on the
host whose directory holds them) and clones work there (they answered 501 before they crossed
the agent API)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import VIRTPOOL, Server, make_server, passable, qemu_pids, wait_for
from tests.vm import exec_streams

HOST = "rmh1"


@dataclass
class RemotePool:
    server: Server
    agent: subprocess.Popen[bytes]
    agent_dir: Path
    agent_log: Path


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[RemotePool]:
    # The image in the server's store before it starts: its first sync makes it the pool's, and
    # the agent fetches it from there.
    server = make_server(tmp_path_factory, image_cache, "rm-control", command="server")
    agent_dir = tmp_path_factory.mktemp("rm-agent")
    passable(agent_dir)
    log = agent_dir.parent / "rm-agent.log"
    token = server.api().join_token(600)["token"]
    join = (server.data_dir / "join.url").read_text().strip()
    with log.open("wb") as out:
        agent = subprocess.Popen([VIRTPOOL, "agent", "--server", join, "--join", token, "--data-dir",
                                  str(agent_dir), "--listen", "127.0.0.1:0", "--name", HOST,
                                  "--net-prefix", "rm"], stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        assert wait_for(lambda: any(h.name == HOST and h.lease_epoch for h in server.api().hosts()),
                        timeout=90), log.read_text()
        yield RemotePool(server, agent, agent_dir, log)
        for vm in server.api().vms():
            server.api().delete_vm(vm.id, force=True)
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(timeout=60)
        server.stop()
    assert qemu_pids(agent_dir) == []


def test_a_vm_on_a_remote_host_streams_exec_and_is_snapshotted_backed_up_and_cloned(
        pool: RemotePool, tmp_path: Path) -> None:
    server = pool.server
    made = server.cli("vm", "create", "rmweb", "--start", "--wait", "--json", timeout=600)
    assert made.returncode == 0, made.stderr + pool.agent_log.read_text()[-2000:]
    assert json.loads(made.stdout)["host"] == HOST
    assert (pool.agent_dir / "vms").is_dir() and not (server.data_dir / "vms").exists()

    # Through the agent's API too: output comes back and piped input goes in while it runs,
    # for several execs at once.
    exec_streams.check_output_streams_back(server.env, "rmweb")
    exec_streams.check_input_streams_in(server.env, "rmweb")
    exec_streams.check_large_input_arrives_whole(server.env, "rmweb")
    exec_streams.check_concurrent_streams_keep_their_own_input_and_output(server.env, "rmweb")

    snap = server.cli("vm", "snapshot", "create", "rmweb", "s1", "--json")
    assert snap.returncode == 0, snap.stderr
    listed = server.cli("vm", "snapshot", "list", "rmweb", "--json")
    assert [s["name"] for s in json.loads(listed.stdout)] == ["s1"], listed.stderr

    target = tmp_path / "chain"  # a directory on the agent's host (this machine)
    backed = server.cli("vm", "backup", "create", "rmweb", "--to", str(target), "--json")
    assert backed.returncode == 0, backed.stderr
    assert [f["kind"] for f in json.loads(backed.stdout)["files"]] == ["full"]
    assert (target / "0000-full.qcow2").is_file()
    # The chain is a directory of the agent's host: read and restored there, by name.
    unnamed = server.cli("vm", "backup", "list", str(target))
    assert unnamed.returncode != 0 and "--host NAME" in unnamed.stderr, unnamed.stderr
    chain = server.cli("vm", "backup", "list", str(target), "--host", HOST, "--json")
    assert chain.returncode == 0 and json.loads(chain.stdout)["vm"] == "rmweb", chain.stderr
    restored = server.cli("vm", "restore-backup", str(target), "rmback", "--host", HOST, "--json")
    assert restored.returncode == 0, restored.stderr
    back = json.loads(restored.stdout)
    assert back["host"] == HOST and back["state"] == "stopped" and back["pinned"]
    assert (pool.agent_dir / "vms" / back["id"] / "disk.qcow2").is_file()

    cloned = server.cli("vm", "clone", "rmweb", "rmcopy", "--snapshot", "s1", "--json")
    assert cloned.returncode == 0, cloned.stderr
    copy = json.loads(cloned.stdout)
    assert copy["host"] == HOST and copy["state"] == "stopped" and copy["pinned"]  # with its disk
    assert (pool.agent_dir / "vms" / copy["id"] / "disk.qcow2").is_file()

    assert server.cli("vm", "snapshot", "delete", "rmweb", "s1").returncode == 0
    for name in ("rmback", "rmcopy", "rmweb"):
        assert server.cli("vm", "delete", name, "--force").returncode == 0
    assert wait_for(lambda: not list((pool.agent_dir / "vms").iterdir()), timeout=60)
