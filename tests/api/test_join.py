"""Hosts joining a pool, as the attacks and mistakes an operator meets (issue 10, item 8):
a wrong, used or expired join token, a token of another pool, a second agent claiming a host's
name, an incompatible agent, a certificate of another CA, a removed host's agent. Against a real
`virtpool server` over real HTTPS on loopback; each refusal is a clear 4xx and changes nothing.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, make_server
from virtpool.control.pki import CertificateAuthority
from virtpool.model.agent import CONTRACT_VERSION
from virtpool.model.certs import key_pem, make_csr, new_key


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory, None, "join", command="server")
    yield srv
    srv.stop()


def join_url(server: Server) -> str:
    return (server.data_dir / "join.url").read_text().strip()


def token(server: Server, expires_s: float = 600) -> str:
    return str(server.api().join_token(expires_s)["token"])


def enrol(server: Server, token_text: str, name: str, *, version: str = CONTRACT_VERSION) -> httpx.Response:
    key = new_key()
    body = {"token": token_text, "name": name, "csr_pem": make_csr(key, name).decode(),
            "version": version, "address": "127.0.0.1:9"}
    ca = server.data_dir / "pki" / "ca.crt"
    reply = httpx.post(f"{join_url(server)}/agent/v1/enrol", json=body,
                       verify=ssl.create_default_context(cafile=str(ca)), timeout=30)
    reply.key_pem = key_pem(key)  # type: ignore[attr-defined]
    return reply


def hosts(server: Server) -> list[str]:
    return sorted(h.name for h in server.api().hosts())


def refused(reply: httpx.Response, status: int, words: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert words in reply.json()["detail"], reply.json()


def test_the_ca_is_made_on_first_start_with_private_keys(server: Server) -> None:
    pki = server.data_dir / "pki"
    for key in ("ca.key", "control.key", "listener.key"):
        assert (pki / key).stat().st_mode & 0o077 == 0, key
    assert join_url(server).startswith("https://127.0.0.1:")


def test_a_token_is_good_once(server: Server) -> None:
    one = token(server)
    assert enrol(server, one, "pcj1").status_code == 200
    before = hosts(server)
    refused(enrol(server, one, "pcj2"), 401, "used already")
    assert hosts(server) == before  # nothing was added


def test_a_wrong_token_and_a_damaged_one_are_refused(server: Server) -> None:
    before = hosts(server)
    refused(enrol(server, "not-a-token", "pcj3"), 401, "not a virtpool join token")
    good = token(server)
    prefix, token_id, secret, ca = good.split(".")
    refused(enrol(server, f"{prefix}.{token_id}.{secret}x.{ca}", "pcj3"), 401, "unknown join token")
    refused(enrol(server, f"{prefix}.{token_id}.{secret}.{'0' * 64}", "pcj3"), 401, "another pool")
    assert hosts(server) == before
    assert enrol(server, good, "pcj3").status_code == 200  # the real one still works: not spent


def test_an_expired_token_is_refused(server: Server) -> None:
    short = token(server, expires_s=1)
    time.sleep(1.5)
    before = hosts(server)
    refused(enrol(server, short, "pcj4"), 401, "expired")
    assert hosts(server) == before


def test_a_second_agent_cannot_take_a_joined_hosts_name(server: Server) -> None:
    assert enrol(server, token(server), "pcj5").status_code == 200
    second = token(server)
    refused(enrol(server, second, "pcj5"), 409, "is in the pool already")
    assert enrol(server, second, "pcj6").status_code == 200  # the token was not spent by the refusal


def test_an_incompatible_agent_is_refused(server: Server) -> None:
    before = hosts(server)
    refused(enrol(server, token(server), "pcj7", version="99.0"), 426, "contract 99.0")
    assert hosts(server) == before


def heartbeat(server: Server, cert: Path, key: Path, name: str) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(server.data_dir / "pki" / "ca.crt"))
    context.load_cert_chain(str(cert), str(key))
    body: dict[str, Any] = {"name": name, "epoch": None, "version": "test", "contract": CONTRACT_VERSION,
                            "address": "127.0.0.1:9"}
    return httpx.post(f"{join_url(server)}/agent/v1/heartbeat", json=body, verify=context, timeout=30)


def test_a_removed_hosts_agent_is_refused_from_its_next_request(server: Server, tmp_path: Path) -> None:
    reply = enrol(server, token(server), "pcj8")
    assert reply.status_code == 200
    cert, key = tmp_path / "agent.crt", tmp_path / "agent.key"
    cert.write_text(reply.json()["cert_pem"])
    key.write_bytes(reply.key_pem)  # type: ignore[attr-defined]
    assert heartbeat(server, cert, key, "pcj8").status_code == 200
    refused(heartbeat(server, cert, key, "pcj1"), 401, "not host 'pcj1''s")  # only as itself
    server.api().remove_host("pcj8")
    refused(heartbeat(server, cert, key, "pcj8"), 401, "revoked")


def test_a_certificate_of_another_ca_does_not_get_through_tls(server: Server, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other-pki")
    files = other.issue("intruder", "pcj1", [], client=True, server=False)
    with pytest.raises(httpx.HTTPError):  # the handshake fails: the pool CA did not sign it
        heartbeat(server, files.cert, files.key, "pcj1")
