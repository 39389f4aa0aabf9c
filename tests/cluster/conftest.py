"""A pool of three hosts in network namespaces, on one PostgreSQL, for the whole session.

Each host runs `virtpool up` in its own namespace (its agent in-process, its lease renewed by
it), listening on its own address; a `virtpool server` (the control plane alone) runs in the
root namespace on the same database. PostgreSQL listens on the bridge's address, so that a host
whose link is cut loses the database, as a real one would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.harness import GATEWAY, HOST_NAMES, NETWORK, Lab, NetnsHost
from tests.conftest import link_image, passable, wait_for
from tests.postgres import create_database, postgres_server
from virtpool.model.layout import API_CA_FILE
from virtpool.sdk import Client

VIRTPOOL = str(Path(sys.executable).parent / "virtpool")


@dataclass
class Node:
    """One `virtpool up` or `virtpool server` process of the lab and its API."""

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

    def start(self) -> Node:
        (self.data_dir / "api.url").unlink(missing_ok=True)
        self.proc = self.lab.start(self.argv, self.log, self.host,
                                   env={**os.environ, "VIRTPOOL_DATA_DIR": str(self.data_dir)})
        if not wait_for(lambda: (self.data_dir / "api.url").exists() or self.proc.poll() is not None,
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
    db_url: str  # as the hosts reach it: over the bridge
    hosts: list[Node]
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
    with postgres_server(also_listen=GATEWAY, trust_network=NETWORK) as url:
        yield url


def _passphrase(first: Node | None) -> list[str]:
    """The pool CA's passphrase, made by the pool's first server: every further one needs it."""
    return [] if first is None else ["--ca-passphrase-file", str(first.data_dir / "pki" / "ca.passphrase")]


def up_node(lab: Lab, host: NetnsHost, db_url: str, image_cache: Path | None, *,
            first: Node | None = None) -> Node:
    (host.data_dir / "images").mkdir(exist_ok=True)
    if image_cache is not None and not (host.data_dir / "images" / "default").exists():
        link_image(image_cache, host.data_dir)
    return Node(lab, host.data_dir, [
        VIRTPOOL, "up", "--data-dir", str(host.data_dir), "--listen", f"{host.address}:0",
        "--db", db_url, "--no-build", "--boot-timeout", "120", *_passphrase(first)], host)


def server_node(lab: Lab, name: str, db_url: str, *, first: Node | None = None) -> Node:
    data_dir = lab.root / name
    data_dir.mkdir(mode=0o700, exist_ok=True)
    return Node(lab, data_dir, [VIRTPOOL, "server", "--data-dir", str(data_dir),
                                "--listen", "127.0.0.1:0", "--db", db_url, *_passphrase(first)])


@pytest.fixture(scope="session")
def cluster(lab: Lab, cluster_db: str, image_cache: Path) -> Iterator[Cluster]:
    passable(lab.root)
    db = create_database(cluster_db, "pool")
    on_bridge = db.replace("@127.0.0.1:", f"@{GATEWAY}:")
    # One at a time: the first migrates the schema and makes the admin token and the pool CA.
    hosts: list[Node] = []
    for h in lab.hosts:
        hosts.append(up_node(lab, h, on_bridge, image_cache, first=hosts[0] if hosts else None).start())
    token = (hosts[0].data_dir / "admin.token").read_text().strip()
    control = server_node(lab, "control", db, first=hosts[0]).start()
    for node in (*hosts, control):
        node.token = token
    cluster = Cluster(lab, on_bridge, hosts, control)
    yield cluster
    with control.api() as api:  # VMs deleted through the pool, before the lab kills the rest
        for vm in api.vms(all_projects=True):
            owner = cluster.node(vm.host) if vm.host in HOST_NAMES else None
            if owner is not None and owner.proc is not None and owner.proc.poll() is None:
                with owner.api() as at_host:
                    try:
                        at_host.delete_vm(vm.id, force=True)
                    except Exception:  # the lab kills what is left and counts it
                        pass
