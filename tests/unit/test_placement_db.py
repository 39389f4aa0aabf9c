"""Placement against a real database: claims, retries, releases, the host inventory service.

The VMs here are rows only: ``RowsAgent`` stands in for a host's agent where a create would make
a disk (no QEMU). The same behaviour is shown through a real server in tests/vm/test_scheduling.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from tests.postgres import create_database, postgres_server
from virtpool.control.agents.registry import AgentRegistry
from virtpool.control.detached import NoAgentAttached
from virtpool.control.groups import GroupService
from virtpool.control.hosts import HostService
from virtpool.control.placement import Placer
from virtpool.control.rebalancing import MigrationUnavailable, Rebalancer
from virtpool.control.settings import SettingsService
from virtpool.control.store import db
from virtpool.control.store.tables import DEFAULT_PROJECT, HostRow, VMRow
from virtpool.control.vms import VMService
from virtpool.model.errors import (
    Conflict,
    InsufficientResources,
    InvalidRequest,
    VirtpoolError,
)
from virtpool.model.agent import AgentUnreachable
from virtpool.model.image import ImageInfo
from virtpool.model.inventory import GroupSpec, HostAdd, LabelsUpdate, RatiosUpdate
from virtpool.model.resources import PlacementRequest
from virtpool.model.spec import HostInfo, LiveChanges, Resize, VMSpec

LOCAL = "local"


class RowsAgent:
    """The few agent calls a create, resize and delete of a stopped VM make; no disk, no QEMU."""

    def __init__(self) -> None:
        self.disks: set[str] = set()
        self._lock = threading.Lock()
        self.disk_resize_hook: Callable[[], None] | None = None
        self.live: list[tuple[str, LiveChanges]] = []

    def host_info(self) -> HostInfo:
        return HostInfo(hostname=LOCAL, cpus=64, memory_mib=256 * 1024, disk_total_mib=1 << 24,
                        disk_free_mib=1 << 24, accel="kvm", accel_reason="test",
                        qemu_version="-", data_dir="/nonexistent")

    def get_image(self, name: str) -> ImageInfo:
        return ImageInfo.model_construct(name=name)

    def check_port_free(self, port: int) -> bool:
        return True

    def converge_networks(self, desired: object) -> list[object]:
        return []

    def create_disk(self, vm_id: str, image: str, disk_mib: int) -> None:
        with self._lock:
            self.disks.add(vm_id)

    def destroy_vm(self, vm_id: str) -> None:
        with self._lock:
            self.disks.discard(vm_id)

    def resize_disk_offline(self, vm_id: str, disk_mib: int) -> None:
        if self.disk_resize_hook is not None:
            self.disk_resize_hook()

    def vm_ids(self) -> set[str]:
        return set(self.disks)

    def start_vm(self, vm_id: str, spec: object, slot: int) -> None:
        pass

    def wait_ready(self, vm_id: str, timeout: float) -> None:
        pass

    def apply_live(self, vm_id: str, changes: LiveChanges) -> None:
        self.live.append((vm_id, changes))


class RowsImages:
    """The pool's image store as the VM service reads it: every image exists, with no files."""

    def __init__(self, agent: RowsAgent) -> None:
        self.get = agent.get_image

    def files(self, name: str) -> dict[str, Iterator[bytes]]:
        return {}


class Pool:
    """The services of one pool over a database, wired as control/pool.py wires them."""

    def __init__(self, url: str) -> None:
        self.engine = db.make_engine(url)
        db.migrate(self.engine)
        self.sessions: sessionmaker[Session] = db.session_factory(self.engine)
        self.placer = Placer(SettingsService(self.sessions).weigher)  # as control/pool.py
        self.hosts = HostService(self.sessions, self.placer, LOCAL)
        self.agent = RowsAgent()
        agents = AgentRegistry(self.sessions, LOCAL, self.agent)  # type: ignore[arg-type]
        self.vms = VMService(self.sessions, agents, images=RowsImages(self.agent), placer=self.placer)
        self.groups = GroupService(self.sessions)

    def add(self, name: str, *, cpus: int = 4, memory_mib: int = 4096, disk_mib: int = 1 << 20,
            **fields: object) -> None:
        self.hosts.add(HostAdd(name=name, cpus=cpus, memory_mib=memory_mib, disk_mib=disk_mib,
                               **fields))  # type: ignore[arg-type]

    def create(self, name: str, **fields: object) -> str:
        """Create a VM of 1 vCPU, 256 MiB, 1 GiB disk (unless told); return its host."""
        spec = VMSpec(name=name, **{"memory_mib": 256, **fields})  # type: ignore[arg-type]
        return self.vms.create(spec).host

    def host_rows(self) -> dict[str, HostRow]:
        with self.sessions() as session:
            return {r.name: r for r in session.scalars(select(HostRow))}

    def sums(self) -> dict[str, tuple[int, int, int]]:
        """Per host, the sum of the claims of the VMs on it."""
        totals: dict[str, tuple[int, int, int]] = {}
        with self.sessions() as session:
            for vm in session.scalars(select(VMRow)):
                c, m, d = totals.get(vm.host, (0, 0, 0))
                totals[vm.host] = (c + vm.cpus, m + vm.max_memory_mib, d + vm.disk_mib)
        return totals

    def assert_counters_exact(self) -> None:
        sums = self.sums()
        for name, row in self.host_rows().items():
            assert (row.used_cpus, row.used_memory_mib, row.used_disk_mib) == \
                sums.get(name, (0, 0, 0)), name

    def close(self) -> None:
        self.vms.close()
        self.engine.dispose()


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    p = Pool(db.sqlite_url(tmp_path / "state.db"))
    yield p
    p.close()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


# -- the contest of issue 4: 200 requests, room for 50 ------------------------------------

def _contest(pool: Pool) -> None:
    # 20 hosts with room for 2 VMs (by memory), 10 with room for 1: exactly 50 in all. Hosts
    # that are not up, or full of vCPUs, have room that must never be used.
    for i in range(20):
        pool.add(f"two{i:02}", memory_mib=512)
    for i in range(10):
        pool.add(f"one{i:02}", memory_mib=256)
    for state in ("draining", "maintenance", "down"):
        pool.add(f"off-{state}", memory_mib=1 << 16, state=state)
    pool.add("cpu-full", cpus=1, cpu_ratio=0.5, memory_mib=1 << 16)  # capacity 0 vCPUs

    def create(i: int) -> str | Exception:
        try:
            return pool.create(f"vm{i:03}")
        except (VirtpoolError, SQLAlchemyError) as err:  # every outcome is inspected below
            return err

    with ThreadPoolExecutor(max_workers=32) as workers:
        outcomes = list(workers.map(create, range(200)))

    placed = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if not isinstance(o, str)]
    assert len(placed) == 50
    assert all(isinstance(e, InsufficientResources) for e in refused), \
        {type(e).__name__: str(e) for e in refused}
    assert all(e.message.startswith("no host can take 'vm") and "lack memory" in e.message
               and "are not up" in e.message for e in refused)
    assert not {"off-draining", "off-maintenance", "off-down", "cpu-full"} & set(placed)
    rows = pool.host_rows()
    for name, row in rows.items():
        expected = 2 if name.startswith("two") else 1 if name.startswith("one") else 0
        assert placed.count(name) == expected, name
        assert row.used_memory_mib <= row.memory_mib * row.memory_ratio
        assert row.used_cpus <= row.cpus * row.cpu_ratio
    pool.assert_counters_exact()


def test_200_concurrent_creates_for_room_for_50_on_sqlite(pool: Pool) -> None:
    _contest(pool)


def test_200_concurrent_creates_for_room_for_50_on_postgresql(pg_url: str) -> None:
    pool = Pool(pg_url)
    try:
        _contest(pool)
    finally:
        pool.close()



def test_concurrent_creates_never_overcommit_one_nearly_full_host_on_postgresql(
        pg_url: str) -> None:
    """Creates through four servers (four Placers, each with its own cached figures) race for
    the same last room: the claim's guard lets exactly as many in as fit, and each loser is
    told why."""
    url = create_database(pg_url, "nearly_full")
    servers = [Pool(url) for _ in range(4)]
    try:
        servers[0].add("last", memory_mib=768)  # room for 3 VMs of 256 MiB
        for n, server in enumerate(servers):  # each caches the host while it has room
            server.vms.create(VMSpec(name=f"probe{n}", memory_mib=64))
        probes = 4 * 64
        servers[0].add("other", memory_mib=1 << 16, state="maintenance")

        def create(i: int) -> str | Exception:
            try:
                return servers[i % 4].create(f"race{i:02}")
            except (VirtpoolError, SQLAlchemyError) as err:  # every outcome is inspected below
                return err

        with ThreadPoolExecutor(max_workers=16) as workers:
            outcomes = list(workers.map(create, range(24)))
        placed = [o for o in outcomes if isinstance(o, str)]
        assert placed == ["last"] * ((768 - probes) // 256)
        refused = [o for o in outcomes if not isinstance(o, str)]
        assert all(isinstance(e, InsufficientResources)
                   and "1 host is not up (1 in maintenance), 1 lacks memory" in e.message
                   for e in refused), \
            {str(e) for e in refused}
        row = servers[0].host_rows()["last"]
        assert row.used_memory_mib == probes + 256 * len(placed)
        servers[0].assert_counters_exact()
    finally:
        for server in servers:
            server.close()

# -- claims: retries, release, resize ------------------------------------------------------

class CountingPlacer(Placer):
    """Counts the hosts it had to reload because a claim lost a race or the host changed."""

    def __init__(self) -> None:
        super().__init__()
        self.reloads: list[str] = []

    def _reload_host(self, connection: Connection, name: str) -> None:
        self.reloads.append(name)
        super()._reload_host(connection, name)


def test_a_claim_on_stale_figures_is_retried_never_double_booked(pool: Pool) -> None:
    pool.add("a", memory_mib=512)
    pool.add("b", memory_mib=512)
    stale = CountingPlacer()
    with pool.sessions.begin() as session:  # warms its cache: it sees a and b empty
        first = stale.claim(session, PlacementRequest("v1", cpus=1, memory_mib=256)).host
    other = first == "a" and "b" or "a"
    # Another server fills the other host; this placer's cache still thinks it empty.
    with pool.sessions.begin() as session:
        pool.placer.claim(session, PlacementRequest("x1", cpus=1, memory_mib=256))
        pool.placer.claim(session, PlacementRequest("x2", cpus=1, memory_mib=256))
    rows = pool.host_rows()
    assert rows[other].used_memory_mib == 512 or rows[first].used_memory_mib == 512
    full = next(name for name, row in rows.items() if row.used_memory_mib == 512)
    stale.reloads.clear()
    with pool.sessions.begin() as session:
        decision = stale.claim(session, PlacementRequest("v2", cpus=1, memory_mib=256))
    assert decision.host != full
    rows = pool.host_rows()
    assert sorted(r.used_memory_mib for r in rows.values()) == [512, 512]
    # Its own claim on `first` was counted into its cache; the host another server changed
    # under it is the one it had to read again.
    assert other in stale.reloads


def test_a_refusal_is_decided_on_fresh_figures(pool: Pool) -> None:
    pool.add("a", memory_mib=256)
    with pool.sessions.begin() as session:
        pool.placer.claim(session, PlacementRequest("v1", cpus=1, memory_mib=256))
    other = Placer()
    with pool.sessions() as session, pytest.raises(InsufficientResources):
        other.claim(session, PlacementRequest("v2", cpus=1, memory_mib=256))
    with pool.sessions.begin() as session:  # room comes back through another placer
        pool.placer.release(session, "a", PlacementRequest("v1", 1, 256).resources())
    with pool.sessions.begin() as session:  # `other` cached "a" full; it must look again
        assert other.claim(session, PlacementRequest("v2", cpus=1, memory_mib=256)).host == "a"


def test_delete_releases_and_resize_adjusts_the_claim(pool: Pool) -> None:
    pool.add(LOCAL, cpus=2, cpu_ratio=1.0, memory_mib=1024)
    pool.create("web", cpus=1, memory_mib=256, disk_mib=100)
    assert (pool.host_rows()[LOCAL].used_cpus, pool.host_rows()[LOCAL].used_memory_mib) == (1, 256)
    pool.vms.resize("web", Resize(cpus=2, max_memory_mib=512, disk_mib=200))
    row = pool.host_rows()[LOCAL]
    assert (row.used_cpus, row.used_memory_mib, row.used_disk_mib) == (2, 512, 200)
    with pytest.raises(InsufficientResources, match="no room to grow VM 'web'"):
        pool.vms.resize("web", Resize(cpus=3))
    assert pool.vms.get("web").cpus == 2  # refused: nothing changed
    pool.vms.resize("web", Resize(cpus=1))
    assert pool.host_rows()[LOCAL].used_cpus == 1
    pool.vms.delete("web")
    row = pool.host_rows()[LOCAL]
    assert (row.used_cpus, row.used_memory_mib, row.used_disk_mib) == (0, 0, 0)


def test_a_host_over_its_ratios_can_still_shrink_its_vms(pool: Pool) -> None:
    pool.add(LOCAL, cpus=4, cpu_ratio=1.0, memory_mib=1024)
    pool.create("web", cpus=2, memory_mib=512, disk_mib=100)
    pool.create("db", cpus=2, memory_mib=512, disk_mib=100)
    # The hardware figures shrink under the VMs (as a re-registration after a change can do).
    with pool.sessions.begin() as session:
        session.execute(update(HostRow).where(HostRow.name == LOCAL).values(cpus=2, memory_mib=512))
    pool.vms.resize("web", Resize(max_memory_mib=256))
    assert pool.host_rows()[LOCAL].used_memory_mib == 768
    with pytest.raises(InsufficientResources, match=r"it has too few CPUs \(the VM's new shape needs 3, it has 2\)"):
        pool.vms.resize("web", Resize(cpus=3))


def test_a_resize_is_checked_by_the_schedulers_filters_on_the_vms_host(pool: Pool) -> None:
    """The host's figures are the inventory's, as for a placement; its agent's own report (64
    CPUs here) plays no part, and each refusal says which filter refused and by how much."""
    pool.add(LOCAL, cpus=4, cpu_ratio=1.0, memory_mib=2048, disk_mib=4096)
    pool.create("web", cpus=2, memory_mib=1024, disk_mib=1024)
    pool.create("db", cpus=1, memory_mib=512, disk_mib=1024)
    before = pool.host_rows()[LOCAL]
    refusals = [
        ("host 'local' has no room to grow VM 'web' under its ratios: it lacks vCPUs (needs 2 "
         "more, 1 free)", Resize(cpus=4)),
        ("it has too few CPUs (the VM's new shape needs 5, it has 4)", Resize(cpus=5)),
        ("it lacks memory (needs 1024 MiB more, 512 MiB free)", Resize(max_memory_mib=2048)),
        ("it lacks disk (needs 3072 MiB more, 2048 MiB free)", Resize(disk_mib=4096)),
        # Affinity and a CPU cap name host CPUs: the size filter, as when it was placed.
        ("it has too few CPUs (the VM's new shape needs 6, it has 4)", Resize(cpu_affinity=[5])),
        ("it has too few CPUs (the VM's new shape needs 5, it has 4)", Resize(cpu_cap_pct=401)),
    ]
    for sentence, request in refusals:
        with pytest.raises(InsufficientResources) as refused:
            pool.vms.resize("web", request)
        assert sentence in str(refused.value), str(refused.value)
        assert refused.value.hint
    web = pool.vms.get("web")  # refused: nothing changed
    assert (web.cpus, web.max_memory_mib, web.disk_mib, web.cpu_affinity, web.cpu_cap_pct) == \
        (2, 1024, 1024, None, None)
    after = pool.host_rows()[LOCAL]
    assert (after.used_cpus, after.used_memory_mib, after.used_disk_mib, after.generation) == \
        (before.used_cpus, before.used_memory_mib, before.used_disk_mib, before.generation)
    # What fits goes through: the last vCPU, the last of memory, CPUs that exist.
    pool.vms.resize("web", Resize(cpus=3, max_memory_mib=1536, cpu_affinity=[3], cpu_cap_pct=400))
    assert pool.host_rows()[LOCAL].used_cpus == 4
    pool.assert_counters_exact()


def test_a_resize_sees_the_room_another_server_took_since_this_one_cached_the_host(pool: Pool) -> None:
    """The filters read the VM's host afresh in the resize's transaction: another server's
    placement made since this one cached the host's figures is counted."""
    pool.add(LOCAL, cpus=4, cpu_ratio=1.0)
    pool.create("web", cpus=1)
    other = Placer()
    with pool.sessions.begin() as session:  # another server takes 3 vCPUs behind our back
        other.claim(session, PlacementRequest("elsewhere", cpus=3, memory_mib=256))
    with pytest.raises(InsufficientResources, match=r"no room to grow VM 'web' .*lacks vCPUs \(needs 1 more, 0 free\)"):
        pool.vms.resize("web", Resize(cpus=2))
    assert pool.vms.get("web").cpus == 1


def test_a_vm_placed_on_a_host_without_an_agent_is_a_record_that_cannot_start(pool: Pool) -> None:
    pool.add("remote", cpus=64, memory_mib=1 << 20)
    assert pool.create("far") == "remote"
    assert pool.agent.disks == set()  # nothing was made on this host for it
    with pytest.raises(NoAgentAttached, match="host 'remote' has no agent attached"):
        pool.vms.start("far")
    with pytest.raises(NoAgentAttached):
        pool.vms.resize("far", Resize(disk_mib=2048))
    # Asked to start at once, the create is refused and leaves nothing behind.
    with pytest.raises(NoAgentAttached):
        pool.vms.create(VMSpec(name="farther", memory_mib=256), start=True)
    assert [vm.name for vm in pool.vms.list()] == ["far"]
    pool.vms.delete("far")
    assert pool.vms.list() == []
    pool.assert_counters_exact()


def test_a_failed_insert_takes_its_claim_back(pool: Pool) -> None:
    pool.add("a")
    pool.create("web")
    with pytest.raises(Conflict, match="a VM named 'web' exists"):
        pool.create("web")
    pool.assert_counters_exact()


# -- constraints and refusals --------------------------------------------------------------

def test_drained_hosts_take_no_new_vms_and_say_so(pool: Pool) -> None:
    pool.add("a")
    pool.add("b")
    pool.hosts.set_state("a", "draining")
    assert {pool.create(f"v{i}") for i in range(4)} == {"b"}
    pool.hosts.set_state("b", "maintenance")
    with pytest.raises(InsufficientResources) as refused:
        pool.create("v9")
    assert refused.value.message == \
        "no host can take 'v9': 2 hosts are not up (1 draining, 1 in maintenance)"
    pool.hosts.set_state("a", "up")
    assert pool.create("v9") == "a"


def test_anti_affinity_and_required_labels_refusals_explain_themselves(pool: Pool) -> None:
    for name, zone in (("a", "x"), ("b", "x"), ("c", "y")):
        pool.add(name, labels={"zone": zone})
    pool.groups.create(DEFAULT_PROJECT, GroupSpec(name="web", policy="anti-affinity"))
    hosts = {pool.create(f"web{i}", group="web") for i in range(3)}
    assert hosts == {"a", "b", "c"}
    with pytest.raises(InsufficientResources) as refused:
        pool.create("web3", group="web")
    assert refused.value.message == \
        "no host can take 'web3': 3 hosts are excluded by anti-affinity group 'web'"
    assert pool.create("db", required_labels={"zone": "y"}) == "c"
    with pytest.raises(InsufficientResources) as refused:
        pool.create("db2", required_labels={"zone": "z"})
    assert refused.value.message == "no host can take 'db2': 3 hosts lack label zone=z"


def test_soft_anti_affinity_spreads_then_shares(pool: Pool) -> None:
    pool.add("a")
    pool.add("b")
    pool.groups.create(DEFAULT_PROJECT, GroupSpec(name="w", policy="anti-affinity", hard=False))
    assert sorted(pool.create(f"w{i}", group="w") for i in range(4)) == ["a", "a", "b", "b"]


def test_affinity_keeps_members_together(pool: Pool) -> None:
    for name in "abc":
        pool.add(name)
    pool.groups.create(DEFAULT_PROJECT, GroupSpec(name="t", policy="affinity"))
    assert len({pool.create(f"t{i}", group="t") for i in range(3)}) == 1


def test_group_delete_is_refused_while_it_has_vms(pool: Pool) -> None:
    pool.add("a")
    pool.groups.create(DEFAULT_PROJECT, GroupSpec(name="web", policy="anti-affinity"))
    pool.create("web1", group="web")
    with pytest.raises(Conflict, match="group 'web' still has VMs: web1"):
        pool.groups.delete(DEFAULT_PROJECT, "web")
    pool.vms.delete("web1")
    pool.groups.delete(DEFAULT_PROJECT, "web")
    assert pool.groups.list(DEFAULT_PROJECT) == []


def test_the_pool_weigher_and_the_request_override(pool: Pool) -> None:
    pool.add("a")
    pool.add("b")
    packing = Placer(lambda: "pack")
    with pool.sessions.begin() as session:
        hosts = [packing.claim(session, PlacementRequest(f"v{i}", 1, 256)).host for i in range(3)]
    assert len(set(hosts)) == 1  # pack fills one host first
    with pool.sessions.begin() as session:
        spread = packing.claim(session, PlacementRequest("s", 1, 256, weigher="spread")).host
    assert spread != hosts[0]


# -- the host inventory service ------------------------------------------------------------

def test_the_local_host_registers_and_keeps_operator_settings(pool: Pool) -> None:
    info = pool.agent.host_info()
    pool.hosts.register_local(info)
    fresh = pool.hosts.get(LOCAL)
    assert (fresh.cpu_ratio, fresh.memory_ratio, fresh.disk_ratio) == (4.0, 1.0, 1.0)
    assert fresh.cpus.capacity == 4 * info.cpus and fresh.state == "up"
    pool.hosts.set_ratios(LOCAL, RatiosUpdate(cpu=2.0, memory=1.5))
    pool.hosts.label(LOCAL, LabelsUpdate(set={"zone": "a"}))
    pool.hosts.set_state(LOCAL, "maintenance")
    pool.hosts.register_local(info.model_copy(update={"cpus": 32}))
    host = pool.hosts.get(LOCAL)
    assert (host.cpus.physical, host.cpu_ratio, host.memory_ratio) == (32, 2.0, 1.5)
    assert (host.labels, host.state, host.local, host.balloon) == ({"zone": "a"}, "maintenance",
                                                                   True, True)


def test_reconcile_recomputes_the_local_counters_from_its_vms(pool: Pool) -> None:
    pool.hosts.register_local(pool.agent.host_info())
    pool.create("a", cpus=2, memory_mib=512, disk_mib=10)
    pool.create("b", cpus=1, memory_mib=256, max_memory_mib=1024, disk_mib=20)
    with pool.sessions.begin() as session:  # counters gone wrong (e.g. a crash of old code)
        session.get(HostRow, LOCAL).used_cpus = 99  # type: ignore[union-attr]
    pool.hosts.reconcile_usage()
    host = pool.hosts.get(LOCAL)
    assert (host.cpus.allocated, host.memory_mib.allocated, host.disk_mib.allocated) == \
        (3, 512 + 1024, 30)
    assert host.vms == 2


def test_set_ratio_refuses_below_allocation_and_memory_overcommit_without_balloon(
        pool: Pool) -> None:
    pool.add("a", cpus=2, memory_mib=1024)
    for i in range(3):
        pool.create(f"v{i}", cpus=2)  # 6 of 8 vCPUs
    with pytest.raises(Conflict) as refused:
        pool.hosts.set_ratios("a", RatiosUpdate(cpu=2.0))
    assert refused.value.message == \
        "a CPU ratio of 2 would let host 'a' promise 4 vCPUs, but its VMs hold 6 vCPUs"
    assert refused.value.hint is not None and "3.00 or above" in refused.value.hint
    with pytest.raises(InvalidRequest, match="needs ballooning"):
        pool.hosts.set_ratios("a", RatiosUpdate(memory=1.5))
    assert pool.hosts.set_ratios("a", RatiosUpdate(cpu=3.0)).cpus.capacity == 6
    assert pool.hosts.get("a").memory_ratio == 1.0


def test_labels_set_and_remove_and_hosts_with_vms_stay(pool: Pool) -> None:
    pool.add("a", labels={"zone": "x", "disk": "hdd"})
    host = pool.hosts.label("a", LabelsUpdate(set={"disk": "ssd", "gpu": "no"}, remove=["zone"]))
    assert host.labels == {"disk": "ssd", "gpu": "no"}
    pool.create("v")
    with pytest.raises(Conflict, match="holds 1 VM"):
        pool.hosts.remove("a")
    pool.vms.delete("v")
    pool.hosts.remove("a")
    assert pool.hosts.list() == []


def test_rebalance_plans_from_the_database_and_refuses_to_pretend(pool: Pool) -> None:
    pool.add("a", cpus=2, memory_mib=2048)
    pool.add("b", cpus=2, memory_mib=2048)
    pool.hosts.set_state("b", "maintenance")
    for i in range(4):
        pool.create(f"v{i}", memory_mib=256)
    pool.hosts.set_state("b", "up")
    rebalancer = Rebalancer(pool.sessions)
    plan = rebalancer.run(dry_run=True)
    assert plan.spread_before_pp == 50.0 and plan.spread_after_pp == 0.0
    assert [(m.source, m.target) for m in plan.moves] == [("a", "b")] * 2
    with pytest.raises(MigrationUnavailable, match="live migration is not available yet"):
        rebalancer.run(dry_run=False)
    assert set(pool.sums()) == {"a"}  # nothing moved


def test_a_lost_claim_on_postgresql_keeps_no_lock_on_the_host(pg_url: str) -> None:
    """PostgreSQL keeps the lock an UPDATE waited for even when the row then fails its WHERE;
    a lost claim must not, or two creates can deadlock on each other's hosts."""
    from sqlalchemy import text

    from virtpool.control.placement import _claim_once
    from virtpool.model.resources import Resources

    pool = Pool(pg_url)
    try:
        pool.add("locks")
        seen = pool.host_rows()["locks"].generation
        other = pool.engine.connect()
        other.begin()
        other.execute(text("UPDATE hosts SET generation = generation + 1 WHERE name = 'locks'"))

        def commit_once_the_claim_waits() -> None:
            with pool.engine.connect() as watcher:
                while not watcher.execute(text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                )).scalar():
                    watcher.rollback()
            other.commit()

        committer = threading.Thread(target=commit_once_the_claim_waits)
        committer.start()
        with pool.sessions.begin() as session:
            assert _claim_once(session.connection(), "locks", seen,
                               Resources(1, 1, 1)) is False
            committer.join()
            with pool.engine.connect() as third:  # would fail at once if the row were locked
                third.execute(text("SELECT name FROM hosts WHERE name = 'locks' FOR UPDATE NOWAIT"))
                third.rollback()
        other.close()
    finally:
        pool.close()


def test_groups_belong_to_their_project(pool: Pool) -> None:
    from virtpool.control.store.tables import ProjectRow

    with pool.sessions.begin() as session:
        session.add(ProjectRow(id="other", name="other"))
    pool.add("a")
    for project in (DEFAULT_PROJECT, "other"):
        pool.groups.create(project, GroupSpec(name="web", policy="anti-affinity"))
    pool.vms.create(VMSpec(name="web1", memory_mib=256, group="web"))
    # The other project's group of the same name has no member yet: its VM may go there too.
    other = pool.vms.create(VMSpec(name="web1", memory_mib=256, group="web"), project_id="other")
    assert other.host == "a"
    assert pool.groups.get("other", "web").members == {"web1": "a"}
    with pytest.raises(InsufficientResources, match="excluded by anti-affinity group 'web'"):
        pool.vms.create(VMSpec(name="web2", memory_mib=256, group="web"), project_id="other")


def test_reconcile_leaves_vms_on_other_hosts_alone(pool: Pool) -> None:
    # Another server's agent would own them: this one must not mark them crashed or remove them.
    pool.add("remote", cpus=64, memory_mib=1 << 20)
    pool.create("far")
    for state in ("running", "creating"):
        with pool.sessions.begin() as session:
            session.execute(update(VMRow).where(VMRow.name == "far").values(state=state))
        pool.vms.reconcile()
        assert pool.vms.get("far").state.value == state


def test_a_failed_resize_is_undone_even_when_the_room_it_freed_was_taken(pool: Pool) -> None:
    pool.add(LOCAL, cpus=4, cpu_ratio=1.0)
    pool.create("web", cpus=4, disk_mib=100)

    def take_the_room_then_fail() -> None:
        pool.create("thief", cpus=2)  # the 2 vCPUs the resize just gave back
        raise OSError("qemu-img: the disk cannot grow")

    pool.agent.disk_resize_hook = take_the_room_then_fail
    with pytest.raises(OSError, match="cannot grow"):
        pool.vms.resize("web", Resize(cpus=2, disk_mib=200))
    web = pool.vms.get("web")
    assert (web.cpus, web.disk_mib) == (4, 100)  # the record is what the VM has
    pool.assert_counters_exact()


def test_the_balancer_moves_a_balloon_only_while_the_vm_is_as_it_saw_it(pool: Pool) -> None:
    pool.add(LOCAL)
    pool.create("web", memory_mib=256)
    vm_id = pool.vms.get("web").id

    def set_row(**values: object) -> None:
        with pool.sessions.begin() as session:
            session.execute(update(VMRow).where(VMRow.id == vm_id).values(**values))

    assert not pool.vms.move_balloon(vm_id, 256, 128)  # stopped: nothing to move
    set_row(state="running")
    assert pool.vms.move_balloon(vm_id, 256, 128)
    set_row(memory_mib=200)  # the user resized it meanwhile: their word wins
    assert not pool.vms.move_balloon(vm_id, 256, 192)
    assert [(i, c.balloon_mib) for i, c in pool.agent.live] == [(vm_id, 128)]


def test_starts_are_not_checked_again_the_claim_at_create_holds_the_memory(pool: Pool) -> None:
    # Capacity is checked in one place: the scheduler's filters and the claim. Eight creates at
    # once on a 256 GiB host claim room for two; those two start, with no second check.
    pool.add(LOCAL, cpus=64, memory_mib=256 * 1024)
    names = [f"big{i}" for i in range(8)]
    barrier = threading.Barrier(len(names))

    def create(name: str) -> bool:
        barrier.wait()
        try:
            pool.create(name, memory_mib=100 * 1024)
            return True
        except InsufficientResources:
            return False

    with ThreadPoolExecutor(len(names)) as workers:
        created = list(workers.map(create, names))
    assert created.count(True) == 2
    pool.assert_counters_exact()
    for name, made in zip(names, created, strict=True):
        if made:
            assert pool.vms.start(name).state.value == "starting"


def test_a_won_claim_is_counted_without_reading_the_host_again(pool: Pool) -> None:
    pool.add("a", memory_mib=1024)
    placer = CountingPlacer()
    for n in range(3):
        with pool.sessions.begin() as session:
            placer.claim(session, PlacementRequest(f"v{n}", cpus=1, memory_mib=256))
    assert placer.reloads == []
    # Its cache holds what the rows hold: a fourth fits, a fifth is refused.
    with pool.sessions.begin() as session:
        assert placer.claim(session, PlacementRequest("v3", cpus=1, memory_mib=256)).host == "a"
    with pytest.raises(InsufficientResources), pool.sessions.begin() as session:
        placer.claim(session, PlacementRequest("v4", cpus=1, memory_mib=256))
    assert pool.host_rows()["a"].used_memory_mib == 1024


def test_a_claim_rolled_back_is_healed_at_the_next_claim(pool: Pool) -> None:
    pool.add("a", memory_mib=512)
    placer = Placer()
    with pool.sessions.begin() as session:  # warm the cache
        placer.claim(session, PlacementRequest("v0", cpus=1, memory_mib=256))
    session = pool.sessions()
    placer.claim(session, PlacementRequest("gone", cpus=1, memory_mib=256))
    session.rollback()  # the VM's create failed after its claim: nothing of it stays
    session.close()
    with pool.sessions.begin() as session:
        assert placer.claim(session, PlacementRequest("v1", cpus=1, memory_mib=256)).host == "a"
    assert pool.host_rows()["a"].used_memory_mib == 512


def test_a_create_without_start_whose_host_goes_out_of_reach_leaves_nothing(pool: Pool) -> None:
    pool.add(LOCAL)

    def out_of_reach(name: str) -> ImageInfo:
        raise AgentUnreachable("host 'h1' does not answer")

    pool.agent.get_image = out_of_reach  # type: ignore[method-assign]
    tracked: list[str] = []
    with pytest.raises(AgentUnreachable):
        pool.vms.create_in_background(VMSpec(name="lost", memory_mib=256),
                                      track=lambda vm: tracked.append(vm.name))  # type: ignore[arg-type,return-value]
    assert tracked == []
    with pool.sessions() as session:
        assert list(session.scalars(select(VMRow.name))) == []
    pool.assert_counters_exact()
