"""Host leases, the lease monitor, and the leader of the pool's background loops.

- A host is alive while its lease row (``host_leases``: epoch, expiry) keeps being renewed by
  its agent's heartbeats. ``acquire`` starts a lease (a new epoch) when an agent connects;
  ``renew`` is the heartbeat: one UPDATE of that narrow row, the usage figures going to a row
  of their own (``host_usage``) only when the agent sends them.
- The lease monitor (run by the leader only) marks a host whose lease lapsed ``unreachable``
  (an event and an audit entry) and its active VMs ``unknown``: nobody knows whether they
  still run, so they are not called crashed. When the agent renews again the host gets back the
  state an operator gave it, and its VMs are converged (the ``on_back`` callback compares the
  state the pool wants with what the agent reports).
- ``Leadership`` elects one server among several sharing the database to run the background
  loops: a row per role with a holder and an expiry, taken over by another server once it
  expired. It works the same on SQLite and PostgreSQL (plain conditional UPDATEs).

Times are the servers' clocks (UTC): servers sharing a database need clocks that agree to well
under a lease's grace (NTP does). This module never talks to an agent itself.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.audit import AuditLog
from virtpool.control.events import EventLog
from virtpool.control.store.tables import HostLeaseRow, HostRow, HostUsageRow, LeaderRow, utcnow
from virtpool.model.errors import Conflict, NotFound, VirtpoolError
from virtpool.model.lease import (
    MAX_HEARTBEATS_PER_S,
    MONITOR_PERIOD_S,
    HostUsageReport,
    LeaseGrant,
    heartbeat_interval,
    lease_duration,
)

log = logging.getLogger(__name__)

ACTOR = "lease-monitor"
UNREACHABLE = "unreachable"
HOST_COUNT_TTL_S = 30.0  # the pool's size is re-read this often for the heartbeat interval
LEADER_TTL_S = 10.0  # how long a leader holds the role without renewing it
BACKGROUND = "background"  # the role of the server that runs the pool's background loops

HostCallback = Callable[[str], None]
Clock = Callable[[], datetime]


_LEASES = HostLeaseRow.__table__
_USAGE = HostUsageRow.__table__


class StaleLease(Conflict):
    """A renewal with an epoch that is not the host's current one."""


class LeaseService:
    """Acquire, renew and expire host leases.

    ``on_lost(host)`` runs once a host became unreachable, ``on_back(host)`` once it is back:
    the VM service marks the host's VMs unknown and converges them.
    """

    def __init__(self, sessions: sessionmaker[Session], events: EventLog, audit: AuditLog, *,
                 on_lost: HostCallback, on_back: HostCallback,
                 on_state: Callable[[str], None] | None = None, clock: Clock = utcnow,
                 max_heartbeats_per_s: float = MAX_HEARTBEATS_PER_S) -> None:
        self._sessions = sessions
        self._engine: Engine = sessions.kw["bind"]
        self._events = events
        self._audit = audit
        self._on_lost = on_lost
        self._on_back = on_back
        self._on_state = on_state or (lambda host: None)
        self._clock = clock
        self._max_per_s = max_heartbeats_per_s
        self._hosts: tuple[float, int] | None = None  # (read at, monotonic), count

    # -- the heartbeat interval -----------------------------------------------------------

    def interval(self) -> float:
        """Seconds between heartbeats for this pool's size (re-read every HOST_COUNT_TTL_S)."""
        now = time.monotonic()
        if self._hosts is None or now - self._hosts[0] > HOST_COUNT_TTL_S:
            with self._sessions() as session:
                count = session.scalar(select(func.count()).select_from(HostRow)) or 0
            self._hosts = (now, count)
        return heartbeat_interval(self._hosts[1], max_per_s=self._max_per_s)

    def _grant(self, host: str, epoch: int, now: datetime) -> tuple[LeaseGrant, datetime]:
        interval = self.interval()
        lease_s = lease_duration(interval)
        expires = now + timedelta(seconds=lease_s)
        return LeaseGrant(host=host, epoch=epoch, expires_at=expires, interval_s=interval,
                          lease_s=lease_s), expires

    # -- agents ---------------------------------------------------------------------------

    def acquire(self, host: str, *, address: str | None = None,
                agent_version: str | None = None) -> LeaseGrant:
        """Start the host's lease with a new epoch (an agent connected or restarted).

        Records the agent's address and version when given. A host that was unreachable is
        back. Raises NotFound when the host has no row (it must be registered first).
        """
        for _ in range(2):  # a second try when another server inserted the first lease meanwhile
            now = self._clock()
            try:
                with self._sessions.begin() as session:
                    if session.get(HostRow, host) is None:
                        raise NotFound(f"no host named '{host}'", hint="register the host first")
                    facts = {k: v for k, v in (("address", address), ("agent_version", agent_version))
                             if v is not None}
                    if facts:
                        session.execute(update(HostRow).where(HostRow.name == host).values(**facts))
                    lease = session.get(HostLeaseRow, host, with_for_update=True)
                    epoch = 1 if lease is None else lease.epoch + 1
                    grant, expires = self._grant(host, epoch, now)
                    was_lapsed = lease is not None and lease.lapsed
                    if lease is None:
                        session.add(HostLeaseRow(host=host, epoch=epoch, expires_at=expires,
                                                 renewed_at=now, lapsed=False))
                    else:
                        lease.epoch, lease.expires_at, lease.renewed_at = epoch, expires, now
                        lease.lapsed = False  # back now, not at its first renewal
            except IntegrityError:
                continue
            if was_lapsed:
                self._back(host)
            return grant
        raise Conflict(f"the lease of host '{host}' kept changing while it was acquired",
                       hint="try again")

    def renew(self, host: str, epoch: int, usage: HostUsageReport | None = None) -> LeaseGrant:
        """The heartbeat: extend the host's lease if ``epoch`` is its current one.

        Idempotent (a repeated renewal only moves the expiry). A host that was unreachable and
        renews with its epoch is back. Raises StaleLease when the epoch is not current (another
        agent acquired the host since, or no lease was ever acquired): acquire again.
        """
        now = self._clock()
        grant, expires = self._grant(host, epoch, now)
        # The usual case, as cheap as it can be (400 a second at 10,000 hosts): one UPDATE on
        # the narrow lease row (and one on the usage row) on a plain connection, no ORM session.
        with self._engine.begin() as conn:
            renewed = conn.execute(
                update(_LEASES)
                .where(_LEASES.c.host == host, _LEASES.c.epoch == epoch, _LEASES.c.lapsed.is_(False))
                .values(expires_at=expires, renewed_at=now)).rowcount == 1
            reported = usage is None or (renewed and conn.execute(
                update(_USAGE).where(_USAGE.c.host == host)
                .values(reported_at=now, **usage.model_dump())).rowcount == 1)
        if renewed and reported:
            return grant
        # A first usage report, a stale epoch, or a host coming back: the full path.
        back = False
        with self._sessions.begin() as session:
            done = session.execute(
                update(HostLeaseRow)
                .where(HostLeaseRow.host == host, HostLeaseRow.epoch == epoch,
                       HostLeaseRow.lapsed.is_(False))
                .values(expires_at=expires, renewed_at=now)
                .execution_options(synchronize_session=False)).rowcount == 1
            if not done:
                lease = session.get(HostLeaseRow, host, with_for_update=True)
                if lease is None or lease.epoch != epoch:
                    current = "none" if lease is None else str(lease.epoch)
                    raise StaleLease(
                        f"host '{host}' renewed its lease with epoch {epoch}, but its current "
                        f"epoch is {current}",
                        hint="another agent took this host's lease since; acquire it anew")
                lease.expires_at, lease.renewed_at, lease.lapsed = expires, now, False
                back = True
            if usage is not None:
                session.merge(HostUsageRow(host=host, reported_at=now, **usage.model_dump()))
        if back:
            self._back(host)
        return grant

    # -- the monitor's work ---------------------------------------------------------------

    def expire(self) -> list[str]:
        """Mark every host whose lease lapsed unreachable; return their names."""
        now = self._clock()
        with self._sessions() as session:
            due = list(session.scalars(select(HostLeaseRow.host).where(
                HostLeaseRow.expires_at < now, HostLeaseRow.lapsed.is_(False))))
        lost = []
        for host in due:
            with self._sessions.begin() as session:
                state = session.scalar(select(HostRow.state).where(HostRow.name == host))
                # Conditional on the expiry: a renewal that came in since wins.
                marked = session.execute(
                    update(HostLeaseRow)
                    .where(HostLeaseRow.host == host, HostLeaseRow.lapsed.is_(False),
                           HostLeaseRow.expires_at < now)
                    .values(lapsed=True, resume_state=state)
                    .execution_options(synchronize_session=False)).rowcount == 1
                if marked:
                    session.execute(
                        update(HostRow).where(HostRow.name == host)
                        .values(state=UNREACHABLE, generation=HostRow.generation + 1,
                                updated_at=now)
                        .execution_options(synchronize_session=False))
            if marked:
                lost.append(host)
                self._lost(host, now)
        return lost

    def _lost(self, host: str, now: datetime) -> None:
        self._on_state(host)
        self._on_lost(host)  # its VMs unknown before the event says the host is gone
        self._events.record("host.unreachable", f"host '{host}' is unreachable: its agent did "
                            "not renew its lease in time", actor=ACTOR,
                            data={"host": host, "state": UNREACHABLE, "at": now.isoformat()})
        self._audit.record(ACTOR, "host.unreachable", host, "lease lapsed")

    def _back(self, host: str) -> None:
        with self._sessions.begin() as session:
            lease = session.get(HostLeaseRow, host, with_for_update=True)
            state = (lease.resume_state if lease is not None else None) or "up"
            session.execute(
                update(HostRow).where(HostRow.name == host, HostRow.state == UNREACHABLE)
                .values(state=state, generation=HostRow.generation + 1, updated_at=self._clock())
                .execution_options(synchronize_session=False))
            if lease is not None:
                lease.resume_state = None
        self._on_state(host)
        self._events.record("host.reachable", f"host '{host}' is back ({state}): its agent "
                            "renewed its lease", actor=ACTOR, data={"host": host, "state": state})
        self._audit.record(ACTOR, "host.reachable", host, f"lease renewed; state {state}")
        self._on_back(host)

    def set_resume_state(self, host: str, state: str) -> bool:
        """While ``host`` is unreachable, the state it returns to; False if it is not."""
        with self._sessions.begin() as session:
            return session.execute(
                update(HostLeaseRow).where(HostLeaseRow.host == host, HostLeaseRow.lapsed.is_(True))
                .values(resume_state=state)
                .execution_options(synchronize_session=False)).rowcount == 1


class Leadership:
    """One holder of ``role`` among the servers sharing the database, renewed every ttl/3.

    A server is leader until ``ttl_s`` after its last successful renewal *began*, so it stops
    acting before another may start; a follower tries every ttl/10, so a dead leader's role is
    taken within ttl + ttl/10 of its last renewal.
    """

    def __init__(self, sessions: sessionmaker[Session], role: str = BACKGROUND, *,
                 holder: str | None = None, ttl_s: float = LEADER_TTL_S, clock: Clock = utcnow,
                 events: EventLog | None = None) -> None:
        self._sessions = sessions
        self.role = role
        # Host and pid first, so that an operator (and the cluster tests) can tell who leads.
        self.holder = holder or f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self.ttl_s = ttl_s
        self._clock = clock
        self._events = events
        self._until = 0.0  # monotonic deadline of our leadership
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        return time.monotonic() < self._until

    def try_lead(self) -> bool:
        """One attempt to take or keep the role; True while we hold it."""
        began, now = time.monotonic(), self._clock()
        expires = now + timedelta(seconds=self.ttl_s)
        was = self.is_leader()
        try:
            with self._sessions.begin() as session:
                won = session.execute(
                    update(LeaderRow)
                    .where(LeaderRow.role == self.role,
                           or_(LeaderRow.holder == self.holder, LeaderRow.expires_at < now))
                    .values(holder=self.holder, expires_at=expires,
                            epoch=case((LeaderRow.holder == self.holder, LeaderRow.epoch),
                                       else_=LeaderRow.epoch + 1))
                    .execution_options(synchronize_session=False)).rowcount == 1
                if not won and session.get(LeaderRow, self.role) is None:
                    session.add(LeaderRow(role=self.role, holder=self.holder, epoch=1,
                                          expires_at=expires))
                    won = True
        except IntegrityError:
            won = False  # another server inserted the row first
        except SQLAlchemyError:
            log.exception("leader election for %s failed; not leading until it works", self.role)
            won = False
        self._until = began + self.ttl_s if won else 0.0
        if won and not was and self._events is not None:
            self._events.record("leader.elected", f"server {self.holder} leads the pool's "
                                f"{self.role} loops", actor="virtpool",
                                data={"role": self.role, "holder": self.holder})
        return won

    def current(self) -> str | None:
        """The holder whose role has not expired, if any."""
        with self._sessions() as session:
            row = session.get(LeaderRow, self.role)
        return row.holder if row is not None and row.expires_at > self._clock() else None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"leader-{self.role}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            leading = self.try_lead()
            if self._stop.wait(self.ttl_s / 3 if leading else self.ttl_s / 10):
                return

    def stop(self) -> None:
        """Stop and hand the role on at once (a clean shutdown need not wait for the expiry)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.is_leader():
            self._until = 0.0
            try:
                with self._sessions.begin() as session:
                    session.execute(update(LeaderRow).where(
                        LeaderRow.role == self.role, LeaderRow.holder == self.holder)
                        # In the past, so that `expires_at < now` holds for the next taker.
                        .values(expires_at=self._clock() - timedelta(seconds=1))
                        .execution_options(synchronize_session=False))
            except SQLAlchemyError:
                log.exception("could not hand on the %s role; it expires by itself", self.role)


class Loop:
    """Run ``work`` every ``period_s`` in a thread, while ``leadership`` (if any) is ours."""

    def __init__(self, name: str, work: Callable[[], object], period_s: float = MONITOR_PERIOD_S,
                 leadership: Leadership | None = None) -> None:
        self.name = name
        self._work = work
        self._period = period_s
        self._leadership = leadership
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            if self._leadership is not None and not self._leadership.is_leader():
                continue
            try:
                self._work()
            except Exception:  # one bad round must not end the loop: the next one tries again
                log.exception("%s round failed", self.name)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class LocalHeartbeat:
    """The lease of the server's own host, renewed in-process (`virtpool up`'s agent)."""

    def __init__(self, leases: LeaseService, host: str, *, agent_version: str) -> None:
        self._leases = leases
        self._host = host
        self._version = agent_version
        self._grant: LeaseGrant | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._grant = self._leases.acquire(self._host, agent_version=self._version)
        self._thread = threading.Thread(target=self._run, name="local-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._grant is not None and not self._stop.wait(self._grant.interval_s):
            try:
                self._grant = self._leases.renew(self._host, self._grant.epoch)
            except StaleLease:
                self._grant = self._leases.acquire(self._host, agent_version=self._version)
            except (VirtpoolError, SQLAlchemyError):
                log.exception("renewing this host's lease failed; trying again")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
