"""The API beyond loopback: a real `virtpool server` listening on a network namespace's address,
reached from the root namespace over a veth pair, as a client on another machine would.

Written as the attacks: a plain-HTTP request carrying a token, a client that trusts another CA,
a server whose certificate changed after it was pinned. Each is refused with a message that
says what happened, and changes nothing on the server. The namespaces, links, processes and
files are counted at the end.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.harness import Lab, NetnsHost
from tests.conftest import VIRTPOOL, wait_for
from virtpool.control.pki import CertificateAuthority
from virtpool.sdk import Client, InsecureURL, Trust, UntrustedServer

WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
PREFIX = f"rm{WORKER}"
SUBNET = f"10.251.{WORKER}"


@dataclass
class Remote:
    lab: Lab
    host: NetnsHost
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.host.data_dir

    @property
    def log(self) -> Path:
        return self.lab.root / "server.log"

    @property
    def url(self) -> str:
        return (self.data_dir / "api.url").read_text().strip()

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def start(self, *extra: str) -> Remote:
        (self.data_dir / "api.url").unlink(missing_ok=True)
        self.proc = self.lab.start([VIRTPOOL, "server", "--data-dir", str(self.data_dir),
                                    "--listen", f"{self.host.address}:{self.port}", *extra],
                                   self.log, self.host)
        assert wait_for(lambda: (self.data_dir / "api.url").exists() or self.proc.poll() is not None,
                        timeout=90, interval=0.1), self.log.read_text()
        assert self.proc.poll() is None, self.log.read_text()
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, 15)
        self.proc.wait(timeout=30)

    def printed_fingerprint(self) -> str:
        lines = [line for line in self.log.read_text().splitlines() if "certificate has SHA-256" in line]
        return lines[-1].split("SHA-256 ")[1].split()[0]

    def cli(self, *args: str, env: dict[str, str] | None = None, config: Path | None = None,
            stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
        """The CLI in the root namespace: another machine, as far as the server can tell."""
        base = {k: v for k, v in os.environ.items()
                if k not in ("VIRTPOOL_URL", "VIRTPOOL_TOKEN", "VIRTPOOL_CA", "VIRTPOOL_DATA_DIR",
                             "VIRTPOOL_REMOTE")}
        base.update({"COLUMNS": "250", "XDG_CONFIG_HOME": str(config or self.lab.root / "no-config")})
        return subprocess.run([VIRTPOOL, *args], env={**base, **(env or {})}, capture_output=True,
                              text=True, timeout=120, input=stdin.decode())


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    root = tmp_path_factory.mktemp("remote-tls")
    lab = Lab(1, prefix=PREFIX, subnet=SUBNET, root=root).setup()
    try:
        yield Remote(lab, lab.hosts[0]).start()
    finally:
        lab.teardown()
    assert lab.leftovers() == {"namespaces": [], "links": [], "processes": [], "files": []}


def test_the_api_beyond_loopback_is_https_and_plain_http_gets_no_answer(remote: Remote) -> None:
    assert remote.url == f"https://{remote.host.address}:{remote.port}"
    # A plain-HTTP request with a token: the listener speaks TLS only, so no HTTP answer ever
    # comes (the bytes are not a TLS handshake) and no request is served.
    with socket.create_connection((remote.host.address, remote.port), timeout=10) as sock:
        sock.sendall(f"POST /api/v1/projects HTTP/1.1\r\nHost: {remote.host.address}\r\n"
                     f"Authorization: Bearer {remote.token}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 22\r\n\r\n{\"name\": \"rm-plain\"}  ".encode())
        reply = b""
        try:
            while chunk := sock.recv(4096):
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert not reply.startswith(b"HTTP/"), reply
    # The clients refuse to send a token over plain HTTP beyond loopback at all.
    plain = f"http://{remote.host.address}:{remote.port}"
    with pytest.raises(InsecureURL, match="clear text"):
        Client(plain, remote.token)
    refused = remote.cli("vm", "list", env={"VIRTPOOL_URL": plain, "VIRTPOOL_TOKEN": remote.token})
    assert refused.returncode != 0 and "refusing to send a token in clear text" in refused.stderr
    assert f"use https://{remote.host.address}:{remote.port}" in refused.stderr
    with Client(remote.url, remote.token, ca=remote.data_dir / "api-ca.crt") as api:
        assert "rm-plain" not in [p.name for p in api.projects()]  # nothing was created


def test_the_pool_ca_verifies_the_server(remote: Remote) -> None:
    env = {"VIRTPOOL_URL": remote.url, "VIRTPOOL_TOKEN": remote.token,
           "VIRTPOOL_CA": str(remote.data_dir / "api-ca.crt")}
    listed = remote.cli("vm", "list", "--json", env=env)  # the fast path (http.client)
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    hosts = remote.cli("host", "list", env=env)  # through Typer and the SDK
    assert hosts.returncode == 0, hosts.stderr
    with Client(remote.url, remote.token, ca=remote.data_dir / "api-ca.crt") as api:
        assert api.version()


def test_a_server_the_client_does_not_trust_is_refused_and_gets_nothing(
        remote: Remote, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    env = {"VIRTPOOL_URL": remote.url, "VIRTPOOL_TOKEN": remote.token, "VIRTPOOL_CA": str(other.cert_file)}
    for argv in (("vm", "list"), ("project", "create", "rm-untrusted")):
        refused = remote.cli(*argv, env=env)
        assert refused.returncode == 3, refused.stderr
        flat = " ".join(refused.stderr.split())
        assert f"the server at {remote.url} is not trusted" in flat and "Nothing was sent" in flat
        assert remote.printed_fingerprint() in flat.replace(" ", "")
    # The system's CAs do not know the pool CA either.
    with Client(remote.url, remote.token, trust=Trust()) as api, pytest.raises(UntrustedServer):
        api.projects()
    with Client(remote.url, remote.token, ca=remote.data_dir / "api-ca.crt") as api:
        assert "rm-untrusted" not in [p.name for p in api.projects()]


def test_remote_add_pins_the_certificate_then_a_changed_one_is_refused(remote: Remote, tmp_path: Path) -> None:
    config = tmp_path / "config"
    add = ("remote", "add", "lab", remote.url, "--token", remote.token)
    # Not accepted (no terminal to ask on, no --accept-certificate): nothing is stored.
    declined = remote.cli(*add, config=config)
    assert declined.returncode == 1 and "not pinned" in declined.stderr
    assert remote.printed_fingerprint() in declined.stderr
    assert not (config / "virtpool" / "remotes.json").exists()

    added = remote.cli(*add, "--accept-certificate", config=config)
    assert added.returncode == 0, added.stderr
    assert f"SHA-256 {remote.printed_fingerprint()}" in added.stderr
    stored = config / "virtpool"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o700
    for path in (stored / "remotes.json", stored / "servercerts" / "lab.crt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shown = remote.cli("remote", "list", "--json", config=config).stdout
    listed = json.loads(shown)
    assert [(r["name"], r["fingerprint"]) for r in listed] == [("local", None), ("lab", remote.printed_fingerprint())]
    assert listed[1]["token"] is True and remote.token not in shown  # said to be stored, never shown

    assert remote.cli("remote", "switch", "lab", config=config).returncode == 0
    vms = remote.cli("vm", "list", "--json", config=config)
    assert vms.returncode == 0 and json.loads(vms.stdout) == [], vms.stderr
    created = remote.cli("project", "create", "rm-pinned", config=config)
    assert created.returncode == 0, created.stderr
    # The SDK with the pinned certificate: JSON calls and a server-sent event stream (httpx).
    pinned = Trust(pinned_cert=stored / "servercerts" / "lab.crt", remote="lab")
    with Client(remote.url, remote.token, trust=pinned) as api:
        assert "rm-pinned" in [p.name for p in api.projects()]
        first = next(api.stream_events(after=0))
        assert first.id >= 1

    # The server comes back with another certificate (the operator's own, of another CA): the
    # pinned remote refuses it, saying both fingerprints, and sends it nothing.
    other = CertificateAuthority.load_or_create(tmp_path / "operator-ca")
    files = other.issue("api", "operator", [remote.host.address], client=False, server=True)
    remote.stop()
    remote.start("--tls-cert", str(files.cert), "--tls-key", str(files.key))
    assert not (remote.data_dir / "api-ca.crt").exists()  # the pool CA does not vouch for it
    changed = remote.printed_fingerprint()
    for argv in (("vm", "list"), ("project", "create", "rm-after-change")):
        refused = remote.cli(*argv, config=config)
        assert refused.returncode == 3, refused.stderr
        flat = " ".join(refused.stderr.split())
        assert "presents a different certificate from the one pinned for remote 'lab'" in flat
        assert changed in flat.replace(" ", "") and "virtpool remote remove lab" in flat
    # The operator's certificate is trusted by the operator's CA, and nothing was created.
    with Client(remote.url, remote.token, ca=other.cert_file) as api:
        assert "rm-after-change" not in [p.name for p in api.projects()]
    assert remote.cli("remote", "remove", "lab", config=config).returncode == 0
    assert not (stored / "servercerts" / "lab.crt").exists()
