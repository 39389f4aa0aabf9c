"""Mutual TLS plumbing shared by the two ends of the pool: the control plane's agent listener
and the agent's service. Generic: it knows certificates, not hosts or VMs.

uvicorn verifies a client certificate against the CA during the handshake but does not hand it
to the application. ``PeerAwareH11Protocol`` records each TLS connection's peer certificate by
the connection's remote address, which is what the ASGI scope carries as ``client``; a request
handler then reads it with ``peer_of(scope)`` and checks the serial against the revocation
list on every request (so a revoked certificate is refused on the next request, even on a
connection opened before the revocation).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

from virtpool.model.certs import common_name, serial_of


@dataclass(frozen=True)
class PeerCert:
    """The certificate the other end presented (already verified against the pool CA)."""

    serial: str
    common_name: str


_peers: dict[tuple[str, int], tuple[PeerCert, asyncio.Transport]] = {}
_lock = threading.Lock()


def _remember(transport: asyncio.Transport) -> None:
    ssl_object = transport.get_extra_info("ssl_object")
    address = transport.get_extra_info("peername")
    if ssl_object is None or not address:
        return
    der = ssl_object.getpeercert(binary_form=True)
    with _lock:
        # Connections that closed (including ones upgraded to websockets, whose H11 protocol
        # never hears connection_lost) are dropped here.
        for key in [k for k, (_, t) in _peers.items() if t.is_closing()]:
            del _peers[key]
        if der:
            cert = x509.load_der_x509_certificate(der)
            _peers[(str(address[0]), int(address[1]))] = (
                PeerCert(serial_of(cert), common_name(cert)), transport)


class PeerAwareH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, remembering the peer certificate of each connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _remember(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        with _lock:
            address = self.client
            if address is not None:
                entry = _peers.get((str(address[0]), int(address[1])))
                if entry is not None and entry[1] is self.transport:
                    del _peers[(str(address[0]), int(address[1]))]
        super().connection_lost(exc)


def peer_of(scope: Mapping[str, Any]) -> PeerCert | None:
    """The verified client certificate of the request's connection, or None."""
    client = scope.get("client")
    if not client:
        return None
    with _lock:
        entry = _peers.get((str(client[0]), int(client[1])))
    return entry[0] if entry is not None else None


def server_context(cert: Path, key: Path, ca: Path, *, require_client: bool) -> ssl.SSLContext:
    """TLS for a listener of the pool: its certificate, clients checked against the pool CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
    return context


# A stop waits this long for open requests, then closes them: a peer's long poll, event stream
# or console would otherwise hold SIGTERM off for as long as the peer keeps it open.
SHUTDOWN_GRACE_S = 5.0


def nothing_was_cut(record: logging.LogRecord) -> bool:
    """A ``logging`` filter for ``uvicorn.error``: drop uvicorn's error line for a grace that
    ran out on idle TLS connections only (it cancelled no request: the stop lost nothing)."""
    return not record.getMessage().startswith("Cancel 0 running task(s)")


def uvicorn_tls(cert: Path, key: Path, ca: Path, *, require_client: bool) -> dict[str, Any]:
    """uvicorn.Config arguments for a pool listener."""
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "ssl_ca_certs": str(ca),
            "ssl_cert_reqs": ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL,
            "http": PeerAwareH11Protocol, "timeout_graceful_shutdown": SHUTDOWN_GRACE_S}


def client_context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """TLS for a client of the pool: the server checked against ``ca``, our certificate shown."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context
