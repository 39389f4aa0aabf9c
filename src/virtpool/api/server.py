"""Run the platform: the control plane with an in-process agent for this host (`virtpool up`).

This is the composition root: the only place that wires the node package to the control plane.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import uvicorn
from cryptography import x509

from virtpool.api.agent_api import start_listener
from virtpool.api.app import create_app
from virtpool.control.auth import write_private_file
from virtpool.control.balancer import MemoryPolicy
from virtpool.control.pool import Pool, PoolConfig
from virtpool.control.vms import DEFAULT_BOOT_TIMEOUT_S
from virtpool.control.pki import Files
from virtpool.model.certs import fingerprint
from virtpool.model.errors import InvalidRequest
from virtpool.model.layout import API_CA_FILE, JOIN_URL_FILE, TOKEN_FILE, URL_FILE
from virtpool.mtls import SHUTDOWN_GRACE_S, nothing_was_cut
from virtpool.model.spec import Accel
from virtpool.node.agent import LocalAgent
from virtpool.node.images.catalog import ImageCatalog
from virtpool.node.serial import DEFAULT_CAP_BYTES
from virtpool.sdk.tls import is_loopback

log = logging.getLogger(__name__)

WILDCARDS = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True)
class ServeOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8470
    accel: Accel = "auto"
    db_url: str | None = None
    build_default_image: bool = True
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT_S
    log_cap_bytes: int = DEFAULT_CAP_BYTES
    memory: MemoryPolicy = field(default_factory=MemoryPolicy)
    control_only: bool = False  # `virtpool server`: API and records, no agent on this host
    net_prefix: str = "vp"  # of the host's bridges, taps, VXLAN devices and nftables tables
    # Where agents join (HTTPS, the pool CA's certificate); None: the API's host, and the API's
    # port + 1 (or any free port when the API's is 0).
    agent_listen: tuple[str, int] | None = None
    # The API's own certificate and key (PEM); None: one of the pool CA when the API listens
    # beyond loopback (where it serves HTTPS only), plain HTTP on loopback.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca_passphrase_file: Path | None = None  # the pool CA's (control/ca_store.py)
    # This host's VXLAN address for networks that span it and joined hosts; None: the address
    # agents join at when that is one particular address, else none.
    vtep: str | None = None

    def local_vtep(self) -> str | None:
        """The VXLAN address of this host's in-process agent (see ``vtep``)."""
        if self.control_only:
            return None
        if self.vtep is not None:
            return vtep_address(self.vtep)
        if self.agent_listen is None:
            return None
        try:
            address = ipaddress.ip_address(self.agent_listen[0])
        except ValueError:
            return None  # a name: VXLAN needs an address
        # Agents can reach one particular address; not "every address" nor loopback.
        return None if address.is_unspecified or address.is_loopback else str(address)

    def agent_address(self) -> tuple[str, int]:
        if self.agent_listen is not None:
            return self.agent_listen
        return self.host, (self.port + 1 if self.port else 0)


def vtep_address(text: str) -> str:
    """A VXLAN address as given (`--vtep`): an IPv4 address of this host; InvalidRequest if not."""
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise InvalidRequest(f"'{text}' is not an IPv4 address for --vtep",
                             hint="give an address of this host that the other hosts reach, "
                                  "e.g. --vtep 192.0.2.10") from None
    if address.is_unspecified or address.is_loopback or address.is_multicast:
        raise InvalidRequest(f"--vtep {text} cannot carry VXLAN to other hosts",
                             hint="give this host's own address on the network the other hosts share")
    return str(address)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidRequest(f"cannot read listen address '{text}'", hint="write HOST:PORT, e.g. 127.0.0.1:8470")
    return host.strip("[]") or "127.0.0.1", int(port)


def api_tls(pool: Pool, options: ServeOptions) -> Files | None:
    """The certificate the API serves with, or None for plain HTTP (loopback only).

    Beyond loopback a bearer token must never cross the network in clear text, so there is no
    plain-HTTP listener there at all: the operator's certificate, else one of the pool CA for
    the addresses the API answers on. A client checks the latter with the pool CA's file
    (``VIRTPOOL_CA``, or ``api-ca.crt`` in this data dir) or pins it (`virtpool remote add`).
    """
    if (options.tls_cert is None) != (options.tls_key is None):
        raise InvalidRequest("--tls-cert and --tls-key go together",
                             hint="give both (the certificate and its key, PEM), or neither")
    if options.tls_cert is not None and options.tls_key is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(options.tls_cert, options.tls_key)
        except (OSError, ssl.SSLError) as err:
            raise InvalidRequest(f"cannot serve with {options.tls_cert} and {options.tls_key}: {err}",
                                 hint="give a PEM certificate and the PEM key that belongs to it") from err
        return Files(options.tls_cert, options.tls_key)
    if is_loopback(options.host):
        return None
    return pool.api_cert(api_names(options.host))


def api_names(host: str) -> list[str]:
    """The names a client may reach the API by: the address it listens on (every address of
    this machine for a wildcard), this machine's name, and loopback."""
    names = {host, socket.gethostname(), "localhost", "127.0.0.1"}
    if host in WILDCARDS:
        names |= {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs
                  if a.family in (socket.AF_INET, socket.AF_INET6)}
    return sorted(names - WILDCARDS)


def _shown_host(host: str) -> str:
    # A wildcard is reached on this machine at loopback (and the certificate names it).
    host = "127.0.0.1" if host in WILDCARDS else host
    return f"[{host}]" if ":" in host else host


def open_pool(options: ServeOptions) -> Pool:
    # Everything virtpool writes is its own (state.db, tokens, logs); the few files VM users must
    # read (images) are opened up explicitly.
    os.umask(0o077)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    # As root, 0711: each VM's QEMU, running as its own user, passes through to its run dir and
    # the images; nobody else can list anything here, and the files are private (below).
    os.chmod(options.data_dir, 0o711 if os.geteuid() == 0 else 0o700)
    for name in ("state.db", "state.db-wal", "state.db-shm", TOKEN_FILE, URL_FILE):
        path = options.data_dir / name
        if path.exists():
            os.chmod(path, 0o600)
    agent = None if options.control_only else LocalAgent(
        options.data_dir, accel=options.accel, log_cap_bytes=options.log_cap_bytes,
        net_prefix=options.net_prefix)
    config = PoolConfig(data_dir=options.data_dir, db_url=options.db_url,
                        boot_timeout=options.boot_timeout, memory=options.memory,
                        control_only=options.control_only,
                        ca_passphrase_file=options.ca_passphrase_file, vtep=options.local_vtep())
    # Without an agent here, the pool's images live in the control plane's own store.
    images = ImageCatalog(options.data_dir / "images") if agent is None else None
    return Pool(config, agent, images)


def serve(options: ServeOptions, announce: Callable[[str], None] = print) -> None:
    """Start everything and serve in the foreground until interrupted."""
    pool = open_pool(options)
    listener: uvicorn.Server | None = None
    try:
        created = pool.start()
        # `virtpool server` builds nothing by itself: `image build` against it does (its store).
        if options.build_default_image and not options.control_only and not any(i.name == "default" for i in pool.images.list()):
            announce("building the default guest image (first start only)…")
            status = pool.images.build_now("default")
            if status.state != "done":
                announce(f"image build failed: {status.error}")
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only
        # then; without it every response waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(socket.AF_INET6 if ":" in options.host else socket.AF_INET,
                             socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((options.host, options.port))
        tls = api_tls(pool, options)
        _publish_api_ca(pool, tls)
        agent_host, agent_port = options.agent_address()
        _, listener, pool.join_url = start_listener(pool, agent_host, agent_port, announce)
        write_private_file(pool.config.data_dir / JOIN_URL_FILE, pool.join_url + "\n")
        # Listening before the URL file appears: a client that reads it can connect at once.
        sock.listen(2048)
        port = sock.getsockname()[1]
        url = f"{'https' if tls else 'http'}://{_shown_host(options.host)}:{port}"
        write_private_file(pool.config.url_file, url + "\n")
        role = "control plane only, no agent on this host" if options.control_only else "with this host's agent"
        announce(f"virtpool is up at {url}  (API {url}/api/v1, docs {url}/docs; {role})")
        token_note = "created on this first start" if created else "created on first start"
        announce(f"admin token ({token_note}): {pool.config.token_file}")
        if tls is not None:
            announce(f"HTTPS only; the API's certificate has SHA-256 {cert_fingerprint(tls.cert)} "
                     "(`virtpool remote add NAME URL` shows the same)")
        https = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)} if tls else {}
        # proxy_headers off: uvicorn's default believes X-Forwarded-For from 127.0.0.1, which
        # let any local client pose as other addresses to the failed-authentication limit
        # (api/auth_limit.py counts the TCP peer); and it cost every request a middleware.
        config = uvicorn.Config(create_app(pool), log_level="warning", access_log=False,
                                proxy_headers=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_S, **https)
        logging.getLogger("uvicorn.error").addFilter(_denials_are_complete)
        logging.getLogger("uvicorn.error").addFilter(nothing_was_cut)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if listener is not None:
            listener.should_exit = True
        for published in (pool.config.url_file, pool.config.data_dir / JOIN_URL_FILE,
                          pool.config.data_dir / API_CA_FILE):
            published.unlink(missing_ok=True)
        pool.close()


def _publish_api_ca(pool: Pool, tls: Files | None) -> None:
    """``api-ca.crt`` in the data dir when the API's certificate is the pool CA's: what this
    machine's clients check it with. Not for an operator's certificate (its CA is theirs)."""
    target = pool.config.data_dir / API_CA_FILE
    if tls is not None and tls.cert.parent == pool.ca.directory:
        write_private_file(target, pool.ca.cert_file.read_text())
    else:
        target.unlink(missing_ok=True)


def cert_fingerprint(path: Path) -> str:
    return fingerprint(x509.load_pem_x509_certificate(path.read_bytes()))


def _denials_are_complete(record: logging.LogRecord) -> bool:
    """Drop uvicorn's false alarm after a websocket handshake refused with an HTTP answer.

    uvicorn's websockets-sansio protocol sends the denial response (status and problem+json)
    but never marks the handshake complete, so it logs "ASGI callable returned without
    completing handshake" for every refused console, though the client got its answer (and no
    500 follows: uvicorn sends none once a response went out).
    """
    return record.getMessage() != "ASGI callable returned without completing handshake."
