"""Host leases and leader election against a real database (SQLite here; PostgreSQL in
tests/cluster), with a clock the test moves: lapses, returns, stale epochs, failover."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.audit import AuditLog
from virtpool.control.events import EventLog
from virtpool.control.leases import Leadership, LeaseService, StaleLease
from virtpool.control.store import db
from virtpool.control.store.tables import HostRow, HostUsageRow
from virtpool.model import lease as lease_model
from virtpool.model.errors import NotFound
from virtpool.model.lease import HostUsageReport, heartbeat_interval, lease_duration


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    engine = db.open_database(db.sqlite_url(tmp_path / "state.db"))
    factory = db.session_factory(engine)
    with factory.begin() as session:
        for name in ("h1", "h2"):
            session.add(HostRow(name=name, cpus=4, memory_mib=4096, disk_mib=10_000, labels={},
                                state="maintenance" if name == "h2" else "up"))
    return factory


class Recorder:
    def __init__(self) -> None:
        self.lost: list[str] = []
        self.back: list[str] = []


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def calls() -> Recorder:
    return Recorder()


@pytest.fixture
def leases(sessions: sessionmaker[Session], clock: Clock, calls: Recorder) -> LeaseService:
    return LeaseService(sessions, EventLog(sessions), AuditLog(sessions), on_lost=calls.lost.append,
                        on_back=calls.back.append, clock=clock)


def state_of(sessions: sessionmaker[Session], host: str) -> str:
    with sessions() as session:
        return session.scalar(select(HostRow.state).where(HostRow.name == host)) or ""


def test_the_heartbeat_interval_grows_with_the_pool_and_a_dead_host_is_seen_within_60s() -> None:
    assert heartbeat_interval(1) == 5.0
    assert heartbeat_interval(2000) == 5.0
    assert heartbeat_interval(4000) == 10.0
    assert heartbeat_interval(10_000) == 25.0
    assert heartbeat_interval(10_000, max_per_s=50) == 200.0
    assert lease_duration(5.0) == 15.0  # survives one lost heartbeat (5 s) plus 10 s grace
    assert lease_duration(25.0) == 50.0
    assert lease_model.detection_bound(10_000) <= 60.0
    for hosts in (1, 100, 2000, 10_000):
        # the pool as a whole never heartbeats faster than the cap (beyond the 5 s floor)
        rate = hosts / heartbeat_interval(hosts)
        assert rate <= max(lease_model.MAX_HEARTBEATS_PER_S, hosts / 5.0)
    with pytest.raises(ValueError):
        heartbeat_interval(-1)


def test_a_lapsed_lease_makes_the_host_unreachable_with_an_event_and_audit(
        sessions: sessionmaker[Session], leases: LeaseService, clock: Clock, calls: Recorder) -> None:
    grant = leases.acquire("h1", address="https://10.0.0.2:8471", agent_version="0.1.0")
    assert grant.epoch == 1 and grant.interval_s == 5.0 and grant.lease_s == 15.0
    clock.advance(10)
    assert leases.expire() == []
    leases.renew("h1", grant.epoch)
    clock.advance(14)
    assert leases.expire() == []  # renewed at 10 s: good until 25 s
    clock.advance(2)
    assert leases.expire() == ["h1"]
    assert leases.expire() == []  # once
    assert state_of(sessions, "h1") == "unreachable" and calls.lost == ["h1"]
    events = EventLog(sessions).list(kind="host.")
    assert [(e.kind, e.data["host"]) for e in events] == [("host.unreachable", "h1")]
    audit = AuditLog(sessions).list()
    assert [(a.action, a.target) for a in audit] == [("host.unreachable", "h1")]
    with sessions() as session:
        row = session.get(HostRow, "h1")
        assert (row.address, row.agent_version) == ("https://10.0.0.2:8471", "0.1.0")


def test_a_host_that_renews_again_is_back_in_the_state_it_had(
        sessions: sessionmaker[Session], leases: LeaseService, clock: Clock, calls: Recorder) -> None:
    grant = leases.acquire("h2")
    clock.advance(16)
    assert leases.expire() == ["h2"]
    assert state_of(sessions, "h2") == "unreachable"
    leases.renew("h2", grant.epoch)  # the link healed: same agent, same epoch
    assert state_of(sessions, "h2") == "maintenance" and calls.back == ["h2"]
    kinds = [e.kind for e in EventLog(sessions).list(kind="host.")]
    assert kinds == ["host.unreachable", "host.reachable"]


def test_an_operator_state_given_while_unreachable_applies_when_it_is_back(
        sessions: sessionmaker[Session], leases: LeaseService, clock: Clock) -> None:
    leases.acquire("h1")
    clock.advance(16)
    leases.expire()
    assert leases.set_resume_state("h1", "draining")
    assert not leases.set_resume_state("h2", "draining")  # h2 is not unreachable
    assert state_of(sessions, "h1") == "unreachable"
    leases.acquire("h1")  # a restarted agent: a new epoch, and the host is back
    assert state_of(sessions, "h1") == "draining"


def test_a_renewal_with_an_old_epoch_is_refused_and_changes_nothing(
        sessions: sessionmaker[Session], leases: LeaseService, clock: Clock) -> None:
    old = leases.acquire("h1")
    new = leases.acquire("h1")  # another agent took the host
    assert new.epoch == old.epoch + 1
    clock.advance(5)
    with pytest.raises(StaleLease, match="epoch 1, but its current epoch is 2") as err:
        leases.renew("h1", old.epoch)
    assert err.value.status == 409 and "acquire" in str(err.value.hint)
    clock.advance(11)  # 16 s after the new epoch's acquire: the refused renewal did not extend it
    assert leases.expire() == ["h1"]
    with pytest.raises(StaleLease, match="current epoch is none"):
        leases.renew("h2", 1)
    with pytest.raises(NotFound):
        leases.acquire("nope")


def test_usage_figures_go_to_their_own_row(sessions: sessionmaker[Session], leases: LeaseService) -> None:
    grant = leases.acquire("h1")
    usage = HostUsageReport(running_vms=3, memory_used_mib=900, cpu_load_pct=42.5, disk_free_mib=7000)
    leases.renew("h1", grant.epoch, usage)
    leases.renew("h1", grant.epoch)  # without figures: the last ones stay
    with sessions() as session:
        row = session.get(HostUsageRow, "h1")
        assert (row.running_vms, row.memory_used_mib, row.cpu_load_pct, row.disk_free_mib) == (3, 900, 42.5, 7000)


def test_one_leader_at_a_time_and_failover_after_its_lease(sessions: sessionmaker[Session], clock: Clock) -> None:
    a = Leadership(sessions, holder="a", ttl_s=10, clock=clock)
    b = Leadership(sessions, holder="b", ttl_s=10, clock=clock)
    assert a.try_lead() and a.is_leader()
    assert not b.try_lead() and not b.is_leader()
    clock.advance(9)
    assert a.try_lead() and not b.try_lead()  # renewed: good until 19 s
    clock.advance(9.5)
    assert not b.try_lead() and a.current() == "a"
    clock.advance(1)  # a stopped renewing (killed): its role expired at 19 s
    assert b.try_lead() and b.current() == "b"
    assert not a.try_lead() and not a.is_leader()  # the old leader learns it lost the role


def test_a_leader_that_stops_hands_the_role_on_at_once(sessions: sessionmaker[Session], clock: Clock) -> None:
    a = Leadership(sessions, holder="a", ttl_s=10, clock=clock)
    b = Leadership(sessions, holder="b", ttl_s=10, clock=clock)
    assert a.try_lead()
    a.stop()
    assert not a.is_leader() and b.try_lead()
