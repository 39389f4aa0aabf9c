"""A pool of three hosts in network namespaces, driven by one control plane on PostgreSQL.

The control plane is a `virtpool server` in the root namespace (no agent of its own, the pool's
images in its store); each host runs a standalone `virtpool agent` in its own namespace, joined
with a one-time token and reached over mutual TLS across the bridge. The agents' link to the
control plane is the bridge: a host whose link is cut loses the control plane, as a real one
would. Only h1 has the default image beforehand; h2 and h3 fetch it from the control plane.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.harness import GATEWAY, HOST_NAMES, Lab, NetnsHost
from tests.conftest import link_image, passable, wait_for
from tests.postgres import create_database, postgres_server
from virtpool.model.layout import API_CA_FILE
from virtpool.sdk import Client

VIRTPOOL = str(Path(sys.executable).parent / "virtpool")


@dataclass
class Node:
    """One `virtpool server` or `virtpool agent` process of the lab (and a server's API)."""

    lab: Lab
    data_dir: Path
    argv: list[str]
    host: NetnsHost | None = None
    proc: subprocess.Popen[bytes] | None = None
    token: str | None = None

    @property
    def log(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        return (self.data_dir / "api.url").read_text().strip()

    @property
    def is_agent(self) -> bool:
        return self.argv[1] == "agent"

    def start(self) -> Node:
        (self.data_dir / "api.url").unlink(missing_ok=True)
        served = self.log.read_text().count(" serving https://") if self.log.exists() else 0

        def started() -> bool:
            if self.is_agent:
                return self.log.read_text().count(" serving https://") > served
            return (self.data_dir / "api.url").exists()

        self.proc = self.lab.start(self.argv, self.log, self.host,
                                   env={**os.environ, "VIRTPOOL_DATA_DIR": str(self.data_dir)})
        if not wait_for(lambda: started() or self.proc.poll() is not None,
                          timeout=60, interval=0.1) or self.proc.poll() is not None:
            raise RuntimeError(f"{self.argv[1]} did not start: {self.log.read_text()[-3000:]}")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc.wait(timeout=30)

    @property
    def ca(self) -> Path | None:
        """The CA of the API's certificate: a host's API listens beyond loopback, so HTTPS."""
        ca = self.data_dir / API_CA_FILE
        return ca if self.url.startswith("https://") else None

    def api(self, timeout: float = 30) -> Client:
        assert self.token is not None
        return Client(self.url, self.token, timeout=timeout, ca=self.ca)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VIRTPOOL_URL": self.url, "VIRTPOOL_TOKEN": self.token or "",
               "COLUMNS": "300", **({"VIRTPOOL_CA": str(self.ca)} if self.ca else {})}
        return subprocess.run([VIRTPOOL, *args], env=env, capture_output=True, text=True,
                              timeout=timeout)


@dataclass
class Cluster:
    lab: Lab
    db_url: str
    hosts: list[Node]  # `virtpool agent`, one per namespace
    control: Node  # `virtpool server` in the root namespace

    def logs(self, lines: int = 15) -> str:
        """The last lines of every node's log: for a failing assertion's message (the lab's
        files are gone once it is torn down)."""
        tails = []
        for node in (*self.hosts, self.control):
            text = node.log.read_text(errors="replace") if node.log.exists() else ""
            tails.append(f"--- {node.log.name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(tails)

    def node(self, name: str) -> Node:
        return next(n for n in self.hosts if n.host is not None and n.host.name == name)

    def api(self, timeout: float = 30) -> Client:
        return self.control.api(timeout)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.control.cli(*args, timeout=timeout)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    lab = Lab(3).setup()
    try:
        yield lab
    finally:
        lab.teardown()
    assert lab.leftovers() == {"namespaces": [], "links": [], "processes": [], "files": []}


@pytest.fixture(scope="session")
def cluster_db(lab: Lab) -> Iterator[str]:
    with postgres_server() as url:
        yield url


def free_port(address: str) -> int:
    """A port the kernel says is free on ``address`` now (kept for the process's restarts)."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def _passphrase(first: Node | None) -> list[str]:
    """The pool CA's passphrase, made by the pool's first server: every further one needs it."""
    return [] if first is None else ["--ca-passphrase-file", str(first.data_dir / "pki" / "ca.passphrase")]


def server_node(lab: Lab, name: str, db_url: str, agent_listen: str | None = None, *,
                first: Node | None = None) -> Node:
    data_dir = lab.root / name
    data_dir.mkdir(mode=0o711, exist_ok=True)
    extra = ["--agent-listen", agent_listen] if agent_listen else []
    return Node(lab, data_dir, [VIRTPOOL, "server", "--data-dir", str(data_dir),
                                "--listen", "127.0.0.1:0", "--db", db_url, *extra, *_passphrase(first)])


def agent_node(lab: Lab, host: NetnsHost, control: Node) -> Node:
    """A `virtpool agent` for ``host``, joining ``control`` with a fresh one-time token (its
    later starts reuse the certificate and ignore the token)."""
    with control.api() as api:
        token = api.join_token(600)["token"]
    join = (control.data_dir / "join.url").read_text().strip()
    return Node(lab, host.data_dir, [
        VIRTPOOL, "agent", "--server", join, "--join", token, "--data-dir", str(host.data_dir),
        "--listen", f"{host.address}:0", "--name", host.name, "--net-prefix", "cl"], host)


@pytest.fixture(scope="session")
def cluster(lab: Lab, cluster_db: str, image_cache: Path) -> Iterator[Cluster]:
    passable(lab.root)
    db = create_database(cluster_db, "pool")
    # The control plane's agent listener is on the bridge; its port stays the same across the
    # control plane's restarts, since the agents keep the join URL.
    control = server_node(lab, "control", db, f"{GATEWAY}:{free_port(GATEWAY)}")
    (control.data_dir / "images").mkdir(exist_ok=True)
    link_image(image_cache, control.data_dir)
    control.start()
    control.token = (control.data_dir / "admin.token").read_text().strip()
    (lab.hosts[0].data_dir / "images").mkdir(exist_ok=True)
    link_image(image_cache, lab.hosts[0].data_dir)
    hosts = [agent_node(lab, h, control).start() for h in lab.hosts]
    cluster = Cluster(lab, db, hosts, control)
    assert wait_for(lambda: {h.name: h.state for h in control.api().hosts()
                             if h.name in HOST_NAMES} == dict.fromkeys(HOST_NAMES, "up"), 60), \
        cluster.logs()
    with control.api() as api:
        # Each host labelled with its name, so that a test can pin a VM by label too.
        for name in HOST_NAMES:
            api.label_host(name, set={"node": name})
    yield cluster
    if control.proc is not None and control.proc.poll() is None:
        with control.api() as api:  # VMs deleted through the pool, before the lab kills the rest
            for vm in api.vms(all_projects=True):
                try:
                    api.delete_vm(vm.id, force=True)
                except Exception:  # the lab kills what is left and counts it
                    pass
