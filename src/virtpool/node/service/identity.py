"""The agent's identity in the pool: its key, its certificate, the pool CA, where it joined.

On the first start the agent has only a join token. It fetches the control plane's CA and
accepts it only if its SHA-256 is the one the token carries (so a man in the middle cannot
hand it another CA), then sends a certificate request with the token and receives its
certificate. Everything is kept in ``<data>/pki/`` (keys 0600); later starts reuse it and
need no token.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import serialization

from virtpool.model.agent import CONTRACT_VERSION
from virtpool.model.certs import fingerprint_of_pem, key_pem, make_csr, new_key, parse_join_token
from virtpool.model.errors import InvalidRequest, Unauthorized, VirtpoolError
from virtpool.mtls import client_context

ENROL_TIMEOUT_S = 30.0


class EnrolmentRefused(VirtpoolError):
    """The control plane said no to this agent (its answer is the message)."""

    status = 401
    title = "enrolment refused"


@dataclass(frozen=True)
class Identity:
    name: str
    server: str
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "agent.crt"

    @property
    def key(self) -> Path:
        return self.directory / "agent.key"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def load(data_dir: Path, server: str) -> Identity | None:
    """The identity of an earlier start (joined to the pool now at ``server``: a control plane
    may move), or None on the first."""
    directory = data_dir / "pki"
    try:
        saved = json.loads((directory / "identity.json").read_text())
    except (OSError, ValueError):
        return None
    identity = Identity(saved["name"], server, directory)
    if not (identity.cert.exists() and identity.key.exists() and identity.ca.exists()):
        return None
    return identity


def advertised_host(server: str, listen_host: str) -> str:
    """The address the control plane reaches this agent at: the listen address, or (listening
    on every address) the one this host uses to reach the control plane."""
    if listen_host not in ("0.0.0.0", "::", ""):
        return listen_host
    parts = urlsplit(server)
    family = socket.AF_INET6 if ":" in (parts.hostname or "") else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((parts.hostname or "127.0.0.1", parts.port or 443))  # no packet is sent
        return str(probe.getsockname()[0])


def enrol(data_dir: Path, server: str, token_text: str, name: str, address: str) -> Identity:
    """First start: verify the control plane's CA against the token, get a certificate."""
    token = parse_join_token(token_text)
    directory = data_dir / "pki"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    base = server.rstrip("/")
    try:
        # Unverified on purpose: the CA is public, and it is accepted below only if it is the
        # one the token names.
        ca_pem = httpx.get(f"{base}/agent/v1/ca", verify=False, timeout=ENROL_TIMEOUT_S).content
    except httpx.HTTPError as err:
        raise EnrolmentRefused(f"cannot reach the control plane at {server}: {err}",
                               hint="check --server (the URL `virtpool server` printed for agents)") from err
    try:
        fingerprint = fingerprint_of_pem(ca_pem)
    except ValueError as err:
        raise EnrolmentRefused(f"{server} did not answer with a CA certificate") from err
    if fingerprint != token.ca_fingerprint:
        raise Unauthorized(f"the control plane at {server} has another CA than the join token names",
                           hint="check --server, or get a token from that control plane")
    ca_file = directory / "ca.crt"
    _write(ca_file, ca_pem, 0o644)
    key = new_key()
    body = {"token": token_text, "name": name, "csr_pem": make_csr(key, name).decode(),
            "version": CONTRACT_VERSION, "address": address}
    try:
        reply = httpx.post(f"{base}/agent/v1/enrol", json=body, verify=client_context(ca_file),
                           timeout=ENROL_TIMEOUT_S)
    except httpx.HTTPError as err:
        raise EnrolmentRefused(f"cannot reach the control plane at {server}: {err}") from err
    if reply.status_code != 200:
        problem = _problem(reply)
        refusal = EnrolmentRefused(problem.get("detail") or reply.text, hint=problem.get("hint"))
        refusal.status = reply.status_code
        raise refusal
    answer = reply.json()
    _write(directory / "agent.key", key_pem(key))
    _write(directory / "agent.crt", answer["cert_pem"].encode(), 0o644)
    identity = Identity(answer["name"], server, directory)
    _write(directory / "identity.json", json.dumps({"name": identity.name, "server": server}).encode())
    return identity


def check_key(identity: Identity) -> None:
    """The key on disk reads (a damaged data dir is said plainly)."""
    try:
        serialization.load_pem_private_key(identity.key.read_bytes(), password=None)
    except ValueError as err:
        raise InvalidRequest(f"{identity.key} is not a readable key",
                             hint="remove the data dir's pki/ and join again with a new token") from err


def _problem(reply: httpx.Response) -> dict[str, str]:
    try:
        data = reply.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
