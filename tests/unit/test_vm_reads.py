"""The API's VM reads (control/vms/reads.py, Core selects) against real SQLite and PostgreSQL
databases: they show what the mapped rows hold — ports, NICs and security groups in their
order, the address, project filters, cursors and totals; and so do the reads from the event
loop (store/async_reads.py), through dead connections and refused values."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, selectinload

from tests.postgres import create_database, postgres_server
from virtpool.control.store import db
from virtpool.control.store.async_reads import AsyncReads
from virtpool.control.store.read_only import POOL_SIZE, ReadOnly
from virtpool.control.store.tables import (
    NetworkRow,
    NicRow,
    PortRow,
    ProjectRow,
    SecGroupRow,
    VMRow,
    VMSecGroupRow,
)
from virtpool.control.vms import reads
from virtpool.control.vms.records import info
from virtpool.model.vm import VMInfo


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (db.sqlite_url(tmp_path / "state.db") if request.param == "sqlite"
           else create_database(request.getfixturevalue("pg_url"), f"reads_{uuid.uuid4().hex[:8]}"))
    engine = db.open_database(url)
    yield engine
    engine.dispose()


def vm(n: int, name: str, project: str = "default") -> VMRow:
    return VMRow(id=f"{n:032x}", name=name, project_id=project, image="default", cpus=1,
                 memory_mib=256, disk_mib=1024, kernel_args="", accel="auto",
                 max_memory_mib=512, cpu_weight=100, slot=n, state="stopped", host="h1",
                 cloud_init={"user_data": "#cloud-config\n"} if n == 1 else None,
                 pinned_host="h1" if n == 2 else None, cpu_affinity=[0] if n == 3 else None)


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    with Session(engine) as session, session.begin():
        session.add(ProjectRow(id="other", name="other"))
        session.add_all([vm(1, "web"), vm(2, "db"), vm(3, "cache"), vm(4, "web", "other")])
        session.flush()
        session.add_all([PortRow(host_port=28002, vm_id=f"{1:032x}", guest_port=443),
                         PortRow(host_port=28001, vm_id=f"{1:032x}", guest_port=80),
                         PortRow(host_port=28003, vm_id=f"{3:032x}", guest_port=22)])
        session.add_all([NetworkRow(id="n1", project_id="default", name="lan", subnet="10.9.0.0/24",
                                    vni=901, mtu=1450),
                         NetworkRow(id="n2", project_id="default", name="dmz", subnet="10.8.0.0/24",
                                    vni=902, mtu=1450)])
        session.add_all([SecGroupRow(id="g1", project_id="default", name="ssh"),
                         SecGroupRow(id="g2", project_id="default", name="front")])
        session.flush()
        session.add_all([NicRow(id="c2", vm_id=f"{2:032x}", network_id="n1", position=1,
                                mac="52:54:00:00:00:02", address="10.9.0.3"),
                         NicRow(id="c1", vm_id=f"{2:032x}", network_id="n2", position=0,
                                mac="52:54:00:00:00:01", address="10.8.0.2")])
        session.add_all([VMSecGroupRow(vm_id=f"{2:032x}", secgroup_id="g1", position=1),
                         VMSecGroupRow(vm_id=f"{2:032x}", secgroup_id="g2", position=0)])
    return engine


def orm_view(engine: Engine) -> dict[str, object]:
    """Every VM as the mapped rows show it (records.info): the reference."""
    with Session(engine) as session:
        rows = session.scalars(VMRow.__table__.select().with_only_columns(VMRow.id)).all()
        return {vm_id: info(session.get(VMRow, vm_id, options=[selectinload(VMRow.ports)]))
                for vm_id in rows}


def test_one_shows_what_the_rows_hold(seeded: Engine) -> None:
    expected = orm_view(seeded)
    with seeded.connect() as connection:
        for vm_id, view in expected.items():
            assert reads.one(connection, vm_id) == view
        web = reads.one(connection, "web", "default")
        db_vm = reads.one(connection, "db")
        assert reads.one(connection, "web", "other") == expected[f"{4:032x}"]
        assert reads.one(connection, "db", "other") is None
        assert reads.one(connection, "nothing") is None
    assert web is not None and db_vm is not None
    assert [str(p) for p in web.ports] == ["28001:80", "28002:443"]
    assert web.address == "127.0.0.1:28001" and web.cloud_init is not None
    assert [(n.network, n.address) for n in db_vm.nics] == [("dmz", "10.8.0.2"), ("lan", "10.9.0.3")]
    assert db_vm.address == "10.8.0.2" and db_vm.secgroups == ["front", "ssh"] and db_vm.pinned


def test_pages_follow_names_projects_and_cursors(seeded: Engine) -> None:
    expected = orm_view(seeded)
    with seeded.connect() as connection:
        everything, total = reads.page(connection, limit=10)
        assert total == 4 and everything == sorted(expected.values(), key=lambda v: (v.name, v.id))
        first, total = reads.page(connection, limit=2, project_id="default")
        assert total == 3 and [v.name for v in first] == ["cache", "db"]
        rest, total = reads.page(connection, limit=2, project_id="default",
                                 after=(first[-1].name, first[-1].id))
        assert [v.name for v in rest] == ["web"] and rest[0].project == "default"
        assert total == 3  # the project's, not what is left after the cursor
        # A page of one VM with two NICs and two security groups: one VM, all of its children.
        (db_vm,), _ = reads.page(connection, limit=1, project_id="default", after=("cache", f"{3:032x}"))
        assert db_vm == expected[f"{2:032x}"] and len(db_vm.nics) == 2 and len(db_vm.secgroups) == 2
        assert reads.page(connection, limit=2, offset=10) == ([], 4)  # past the end: the total still
        offset, _ = reads.page(connection, limit=2, offset=2)
        assert [v.name for v in offset] == ["web", "web"]
        none, total = reads.page(connection, limit=5, project_id="nobody")
        assert (none, total) == ([], 0)


LOOKUPS = [(f"{1:032x}", None), ("web", "default"), ("web", "other"), ("db", None), ("db", "other"),
           ("nothing", None), ("cache", "default")]


def test_reads_from_the_event_loop_show_what_the_connection_reads_show(seeded: Engine) -> None:
    # GET one VM reads through ReadOnly.rows (on PostgreSQL psycopg's async connections,
    # store/async_reads.py): the same VMs as the reads on a connection, with more reads at
    # once than it keeps connections (they wait their turn), and from a second event loop.
    def shown(vm: VMInfo | None) -> str | None:  # the bytes the API answers
        return vm.model_dump_json() if vm else None

    with seeded.connect() as connection:
        expected = [shown(reads.one(connection, ref, project)) for ref, project in LOOKUPS]
    assert len([e for e in expected if e]) == 5
    read_only = ReadOnly(seeded)

    async def read_all() -> list[str | None]:
        found = await asyncio.gather(*(read_only.rows(*reads.one_query(ref, project))
                                       for ref, project in LOOKUPS * 5))
        return [shown(reads.one_of(rows)) for rows in found]

    try:
        assert len(LOOKUPS) * 5 > POOL_SIZE
        assert asyncio.run(read_all()) == expected * 5
        assert asyncio.run(read_all()) == expected * 5  # another loop: fresh connections there
    finally:
        read_only.dispose()


def test_event_loop_reads_on_postgresql_survive_dead_connections_and_refuse_bad_values(
        pg_url: str) -> None:
    engine = db.open_database(create_database(pg_url, f"reads_{uuid.uuid4().hex[:8]}"))
    with Session(engine) as session, session.begin():
        session.add(vm(1, "web"))
    reads_ = AsyncReads(engine, size=4)

    async def scenario() -> None:
        async def web() -> str | None:
            found = reads.one_of(await reads_.rows(*reads.one_query("web")))
            return found.name if found else None

        assert await asyncio.gather(*(web() for _ in range(8))) == ["web"] * 8  # four connections
        with engine.begin() as connection:  # every one of them dies, as in a database restart
            ended = connection.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name = ''")).scalar_one()
        assert ended >= 4
        assert await web() == "web"  # one more try, on a fresh connection
        assert await asyncio.gather(*(web() for _ in range(8))) == ["web"] * 8
        with pytest.raises(DataError):  # PostgreSQL cannot hold a NUL: the API answers 422
            await reads_.rows(*reads.one_query("a\x00b"))
        assert await web() == "web"  # and the connection it was refused on still reads
        with pytest.raises(ValueError, match="ref"):
            await reads_.rows(reads.one_query("web")[0], {})

    try:
        asyncio.run(scenario())
    finally:
        reads_.dispose()
        engine.dispose()
