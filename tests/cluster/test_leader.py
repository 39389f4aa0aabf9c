"""Two `virtpool server` processes on one PostgreSQL: both serve the API, one leads the
background loops (the lease monitor), and when the leader is killed (-9) the other takes over.

The host whose lease the leader watches is simulated by this test, which acquires its lease on
the same database and then stops renewing it, as a dead agent would.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.cluster.conftest import Node, server_node
from tests.cluster.harness import Lab
from tests.conftest import wait_for
from tests.postgres import create_database
from virtpool.control.audit import AuditLog
from virtpool.control.events import EventLog
from virtpool.control.leases import LEADER_TTL_S, LeaseService
from virtpool.control.store import db
from virtpool.control.store.tables import EventRow, HostRow, LeaderRow
from virtpool.model.lease import detection_bound

WAIT_S = 6 * max(LEADER_TTL_S, detection_bound(1))  # generous: a busy machine; no timing asserts


@pytest.fixture(scope="module")
def leaders_db(cluster_db: str) -> str:
    return create_database(cluster_db, "leaders")


@pytest.fixture(scope="module")
def servers(lab: Lab, leaders_db: str) -> Iterator[list[Node]]:
    nodes = [server_node(lab, "cp-a", leaders_db).start()]
    token = (nodes[0].data_dir / "admin.token").read_text().strip()
    nodes.append(server_node(lab, "cp-b", leaders_db, first=nodes[0]).start())
    for node in nodes:
        node.token = token
    yield nodes
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def sessions(leaders_db: str) -> Iterator[sessionmaker[Session]]:
    engine = db.open_database(leaders_db)
    yield db.session_factory(engine)
    engine.dispose()


def leader_pid(sessions: sessionmaker[Session]) -> int | None:
    """The pid in the holder's name (host/pid/random) of the unexpired leader row."""
    with sessions() as session:
        row = session.scalar(select(LeaderRow).where(LeaderRow.role == "background"))
    if row is None or row.expires_at.timestamp() < time.time():
        return None
    return int(row.holder.split("/")[1])


def unreachable_events(sessions: sessionmaker[Session], host: str) -> list[EventRow]:
    with sessions() as session:
        rows = session.scalars(select(EventRow).where(EventRow.kind == "host.unreachable"))
        return [r for r in rows if (r.data or {}).get("host") == host]


def test_the_leader_is_killed_and_the_other_server_takes_over_its_loops(
        servers: list[Node], sessions: sessionmaker[Session]) -> None:
    for node in servers:  # both serve the API
        with node.api() as api:
            assert isinstance(api.hosts(), list)
    pids = {node.proc.pid: node for node in servers if node.proc is not None}
    first = wait_for(lambda: leader_pid(sessions), WAIT_S)
    assert first in pids, f"no server leads (holder pid {first}, servers {list(pids)})"

    # A host whose agent dies: its lease lapses and the leader's monitor says so.
    with sessions.begin() as session:
        session.add(HostRow(name="ghost", cpus=2, memory_mib=2048, disk_mib=10_000, labels={}))
    leases = LeaseService(sessions, EventLog(sessions), AuditLog(sessions),
                          on_lost=lambda host: None, on_back=lambda host: None)
    grant = leases.acquire("ghost", agent_version="test")
    assert wait_for(lambda: unreachable_events(sessions, "ghost"), WAIT_S)
    assert unreachable_events(sessions, "ghost")[0].actor == "lease-monitor"
    leases.renew("ghost", grant.epoch)  # it is back

    killed_at = time.monotonic()
    pids[first].kill(signal.SIGKILL)
    second = wait_for(lambda: (pid := leader_pid(sessions)) not in (None, first) and pid, WAIT_S)
    took = time.monotonic() - killed_at
    survivor = next(node for pid, node in pids.items() if pid != first)
    assert second == survivor.proc.pid, f"the leader after {first} is {second}"
    print(f"failover after kill -9 of the leader: {took:.1f} s (lease period {LEADER_TTL_S:g} s)")

    def elected() -> bool:  # recorded just after the row is taken
        with sessions() as session:
            holders = [r.data["holder"] for r in session.scalars(
                select(EventRow).where(EventRow.kind == "leader.elected"))]
        return any(h.split("/")[1] == str(second) for h in holders)

    assert wait_for(elected, 30)

    # The new leader runs the lease monitor: the host lapses again and it is seen.
    assert wait_for(lambda: len(unreachable_events(sessions, "ghost")) == 2, WAIT_S)
    with survivor.api() as api:
        assert api.inventory_host("ghost").state == "unreachable"
