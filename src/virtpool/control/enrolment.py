"""Hosts joining the pool: one-time join tokens, enrolment, revocation.

An admin asks for a join token (``virtpool host join-token``): a random secret of which only
the SHA-256 is stored, valid once, until it expires. An agent presents it with a certificate
request; the token is spent in the same transaction that records the host, and the pool CA
signs the agent's certificate. Removing a host revokes that certificate: its serial goes into
``revoked_certs``, which both sides check on every request.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.auth import hash_secret
from virtpool.control.pki import CertificateAuthority
from virtpool.control.store.tables import HostRow, JoinTokenRow, RevokedCertRow, utcnow
from virtpool.model.agent import CONTRACT_VERSION
from virtpool.model.certs import CONTROL_PLANE_CN, JoinToken, cert_pem, parse_join_token, serial_of
from virtpool.model.errors import Conflict, InvalidRequest, Unauthorized, VirtpoolError
from virtpool.model.spec import NAME_RULE, HostInfo, valid_name

MAX_TOKEN_S = 7 * 24 * 3600  # a week: a join token is for joining a host now, not a credential
REVOKED_CACHE_S = 1.0  # every request checks the list; this keeps a burst to one query a second


class IncompatibleVersion(VirtpoolError):
    """The agent speaks a contract this control plane does not."""

    status = 426
    title = "incompatible agent version"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    id: str
    expires_at: datetime


@dataclass(frozen=True)
class Enrolled:
    name: str
    cert_pem: bytes
    ca_pem: bytes
    serial: str


def compatible(version: str) -> bool:
    """Agents and control planes talk when the contract's major versions match."""
    return version.split(".")[0] == CONTRACT_VERSION.split(".")[0]


class Enrolment:
    def __init__(self, sessions: sessionmaker[Session], ca: CertificateAuthority, local_host: str) -> None:
        self._sessions = sessions
        self._ca = ca
        self._local = local_host
        self._revoked: tuple[float, frozenset[str]] = (0.0, frozenset())
        self._lock = threading.Lock()

    # -- tokens ---------------------------------------------------------------------------

    def issue_token(self, expires_s: float, actor: str) -> IssuedToken:
        if not 0 < expires_s <= MAX_TOKEN_S:
            raise InvalidRequest(f"a join token expires within {MAX_TOKEN_S // 3600} hours",
                                 hint="e.g. --expires 1h")
        token = JoinToken(uuid.uuid4().hex, secrets.token_urlsafe(32), self._ca.fingerprint)
        expires = datetime.now(UTC) + timedelta(seconds=expires_s)
        with self._sessions.begin() as session:
            session.add(JoinTokenRow(id=token.id, secret_hash=hash_secret(token.secret),
                                     created_by=actor, expires_at=expires))
        return IssuedToken(str(token), token.id, expires)

    # -- enrolment ------------------------------------------------------------------------

    def enrol(self, token_text: str, name: str, csr_pem: bytes, version: str, address: str) -> Enrolled:
        """Spend the token, record the host, sign its certificate. Changes nothing on refusal."""
        if not compatible(version):
            raise IncompatibleVersion(
                f"the agent speaks contract {version}; this control plane speaks {CONTRACT_VERSION}",
                hint="install the same virtpool version on the agent's host")
        if not valid_name(name):
            raise InvalidRequest(f"'{name}' is not a valid host name", hint=NAME_RULE)
        if name.startswith(CONTROL_PLANE_CN):  # agents check that name to know the control plane
            raise InvalidRequest(f"'{name}' is reserved for the control plane", hint="pick another --name")
        if name == self._local:
            raise Conflict(f"host '{name}' is the control plane's own host, driven by its "
                           "in-process agent", hint="give the agent another --name")
        token = parse_join_token(token_text)
        if token.ca_fingerprint != self._ca.fingerprint:
            raise Unauthorized("the join token is for another pool (its CA differs)",
                               hint="get a token from this control plane: `virtpool host join-token`")
        host, port = _split_address(address)
        cert = self._ca.sign_csr(csr_pem, name, [host])
        serial = serial_of(cert)
        with self._sessions.begin() as session:
            row = session.get(JoinTokenRow, token.id, with_for_update=True)
            now = datetime.now(UTC)
            if row is None or not hmac.compare_digest(row.secret_hash, hash_secret(token.secret)):
                raise Unauthorized("unknown join token", hint="get a new one: `virtpool host join-token`")
            if row.used_at is not None:
                raise Unauthorized(f"this join token was used already (by host '{row.used_by}')",
                                   hint="a join token is good once: get a new one")
            if row.expires_at <= now:
                raise Unauthorized("this join token has expired",
                                   hint="get a new one: `virtpool host join-token --expires 1h`")
            existing = session.get(HostRow, name, with_for_update=True)
            if existing is not None and existing.cert_serial is not None:
                raise Conflict(f"a host named '{name}' is in the pool already, with its own agent",
                               hint=f"give this agent another --name, or `virtpool host remove {name}` first")
            url = f"https://{_bracket(host)}:{port}"
            if existing is None:
                session.add(HostRow(name=name, cpus=1, memory_mib=0, disk_mib=0, labels={},
                                    state="up", balloon=True, address=url, cert_serial=serial,
                                    agent_version=version))
            else:
                existing.address, existing.cert_serial, existing.agent_version = url, serial, version
                existing.generation += 1
            row.used_at, row.used_by = now, name
        return Enrolled(name, cert_pem(cert), cert_pem(self._ca.cert), serial)

    def record_inventory(self, name: str, info: HostInfo) -> None:
        """The hardware an agent reports, into its host row (ratios, labels, state stay)."""
        with self._sessions.begin() as session:
            session.execute(update(HostRow).where(HostRow.name == name).values(
                cpus=info.cpus, memory_mib=info.memory_mib, disk_mib=info.disk_total_mib,
                accel=info.accel, generation=HostRow.generation + 1, updated_at=utcnow())
                .execution_options(synchronize_session=False))

    # -- who is who -----------------------------------------------------------------------

    def check_agent(self, name: str, serial: str) -> None:
        """The caller holding certificate ``serial`` is host ``name``'s current agent."""
        if serial in self.revoked():
            raise Unauthorized("this agent's certificate was revoked (its host was removed)",
                               hint="join again with a new token: `virtpool host join-token`")
        with self._sessions() as session:
            current = session.scalar(select(HostRow.cert_serial).where(HostRow.name == name))
        if current != serial:
            raise Unauthorized(f"this certificate is not host '{name}''s",
                               hint="an agent calls as its own host only")

    def revoke_host(self, session: Session, name: str) -> None:
        """In ``session``'s transaction: revoke the host's certificate (its row is going)."""
        serial = session.scalar(select(HostRow.cert_serial).where(HostRow.name == name))
        if serial is not None and session.get(RevokedCertRow, serial) is None:
            session.add(RevokedCertRow(serial=serial, host=name))

    def forget_cache(self) -> None:
        """After a revocation committed: the next check reads the list afresh."""
        with self._lock:
            self._revoked = (0.0, self._revoked[1])

    def revoked(self) -> frozenset[str]:
        """Serials no longer accepted (cached for at most REVOKED_CACHE_S)."""
        with self._lock:
            at, serials = self._revoked
            if time.monotonic() - at < REVOKED_CACHE_S:
                return serials
        with self._sessions() as session:
            fresh = frozenset(session.scalars(select(RevokedCertRow.serial)))
        with self._lock:
            self._revoked = (time.monotonic(), fresh)
        return fresh


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidRequest(f"cannot read the agent's address '{address}'", hint="HOST:PORT")
    return host.strip("[]"), int(port)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
