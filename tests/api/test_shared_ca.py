"""Two `virtpool server`s on one PostgreSQL are one pool with one CA: an agent enrolled through
one is driven by, and heartbeats to, the other. The CA's key is sealed in the database with
the pool's passphrase; a server without it (or with another) is refused at start, saying what
to do, and changes nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import VIRTPOOL, Server, passable, wait_for
from tests.postgres import create_database
from virtpool.control.agents.remote import RemoteAgent
from virtpool.model.errors import VirtpoolError
from virtpool.model.spec import HostInfo
from virtpool.node.service.app import MAX_WAIT_S


def _refused_start(data_dir: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VIRTPOOL, "server", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
                           "--db", url, *extra], capture_output=True, text=True, timeout=120)


def _poll_quietly(agent: RemoteAgent) -> None:
    """Hold a long poll on the agent's event feed open for as long as it allows."""
    try:
        agent.events(after=10**9, wait=MAX_WAIT_S)
    except (VirtpoolError, OSError):
        pass  # the agent closed it on its way down: what the test wants


def _agent_host(server: Server, name: str) -> tuple[str | None, int | None]:
    view = next((h for h in server.api().hosts() if h.name == name), None)
    if view is None or view.state != "up":
        return None, None
    return view.address, view.lease_epoch


def test_an_agent_enrolled_through_one_server_is_accepted_by_the_other(
        postgres: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    url = create_database(postgres, "shared_ca")
    first_dir = tmp_path_factory.mktemp("ca-first")
    first = Server(first_dir, command="server", extra_args=("--db", url)).start()
    second: Server | None = None
    agent: subprocess.Popen[bytes] | None = None
    try:
        passphrase = first_dir / "pki" / "ca.passphrase"
        assert oct(passphrase.stat().st_mode & 0o777) == "0o600"
        second_dir = tmp_path_factory.mktemp("ca-second")
        shutil.copy2(first_dir / "admin.token", second_dir / "admin.token")

        # Without the pool's passphrase, or with another, the second server does not start.
        missing = _refused_start(second_dir, url)
        assert missing.returncode != 0
        assert "sealed with the pool's CA passphrase, which this server was not given" in " ".join(missing.stdout.split() + missing.stderr.split())
        wrong = tmp_path_factory.mktemp("ca-wrong") / "passphrase"
        wrong.write_text("not-the-pools-passphrase-at-all\n")
        refused = _refused_start(second_dir, url, "--ca-passphrase-file", str(wrong))
        assert refused.returncode != 0
        assert "is not the pool's" in " ".join(refused.stdout.split() + refused.stderr.split())
        assert not (second_dir / "pki" / "ca.key").exists()  # it took nothing of the pool's CA

        given = tmp_path_factory.mktemp("ca-copy") / "ca.passphrase"
        shutil.copy2(passphrase, given)
        second = Server(second_dir, command="server",
                        extra_args=("--db", url, "--ca-passphrase-file", str(given))).start()
        assert (second_dir / "pki" / "ca.crt").read_bytes() == (first_dir / "pki" / "ca.crt").read_bytes()

        # An agent joins through the first server.
        data = tmp_path_factory.mktemp("ca-agent")
        passable(data)
        log = data.parent / "ca-agent.log"
        token = first.api().join_token(600)["token"]
        join = (first_dir / "join.url").read_text().strip()
        agent = _start_agent(join, token, data, log)
        assert wait_for(lambda: _agent_host(first, "pcs1")[1] is not None, timeout=90), log.read_text()
        address, epoch = _agent_host(second, "pcs1")  # its lease, taken through the first
        assert address and epoch is not None

        # The second server drives it with its own control-plane certificate.
        pki = second_dir / "pki"
        driven = RemoteAgent("pcs1", address, ca=pki / "ca.crt", cert=pki / "control.crt",
                             key=pki / "control.key", revoked=frozenset)
        try:
            assert isinstance(driven.host_info(), HostInfo)
            # A long poll held open (as every control plane holds one) does not hold off a
            # stop: the agent closes it after a short grace instead of waiting out the poll.
            poll = threading.Thread(target=_poll_quietly, args=(driven,), daemon=True)
            poll.start()
            time.sleep(1)

            # It restarts, joined to the second server (no token: the identity from the first
            # is reused): the second's agent listener accepts it and its lease goes on there.
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=MAX_WAIT_S - 10)
        finally:
            driven.close()
        agent = _start_agent((second_dir / "join.url").read_text().strip(), None, data, log)
        assert wait_for(lambda: (_agent_host(second, "pcs1")[1] or 0) > epoch, timeout=90), log.read_text()
        assert "Traceback" not in log.read_text() and "ERROR" not in log.read_text()
    finally:
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=60)
        for server in (first, second):
            if server is not None:
                server.stop()


def _start_agent(join: str, token: str | None, data: Path, log: Path) -> subprocess.Popen[bytes]:
    argv = [VIRTPOOL, "agent", "--server", join, "--data-dir", str(data), "--listen", "127.0.0.1:0",
            "--name", "pcs1", "--net-prefix", "pcs"]
    if token is not None:
        argv += ["--join", token]
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
