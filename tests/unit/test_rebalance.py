"""Rebalancing and consolidation plans: fewer moves, lower spread, no constraint broken."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from virtpool.control.scheduler import (
    DEFAULT_THRESHOLD_PP,
    HostArrays,
    MigrationApplier,
    RebalancePlan,
    plan_consolidation,
    plan_rebalance,
    rebalance,
    utilization,
)
from virtpool.model.errors import InvalidRequest
from virtpool.model.resources import (
    Claim,
    Group,
    HostCapacity,
    MeasuredLoad,
    PlacementRequest,
)


def host(name: str, cpus: int = 4, memory_mib: int = 8192, disk_mib: int = 0,
         **kw: object) -> HostCapacity:
    return HostCapacity(name, cpus=cpus, memory_mib=memory_mib, disk_mib=disk_mib, **kw)


def vm(name: str, on: str, cpus: int = 1, memory_mib: int = 1024, **kw: object) -> Claim:
    return Claim(name, on, cpus, memory_mib, 0, **kw)


def apply(plan: RebalancePlan, hosts: list[HostCapacity], claims: list[Claim],
          groups: dict[str, Group] | None = None,
          constraints: dict[str, PlacementRequest] | None = None) -> list[Claim]:
    """Carry the plan out move by move, checking every constraint after each one."""
    by_vm = {c.vm: c for c in claims}
    arrays = HostArrays.build(hosts, claims)
    by_host = {h.name: h for h in hosts}
    moved = [m.vm for m in plan.moves]
    assert len(moved) == len(set(moved)), "a VM moves at most once"
    for move in plan.moves:
        claim = by_vm[move.vm]
        assert claim.host == move.source
        target = by_host[move.target]
        assert target.state == "up"
        request = (constraints or {}).get(move.vm)
        if request is not None:
            assert all(target.labels.get(k) == v for k, v in request.required_labels.items())
            if request.accel == "kvm":
                assert target.accel == "kvm"
        if target.allowed_projects is not None:
            assert claim.project in target.allowed_projects
        arrays.remove_claim(claim)
        by_vm[move.vm] = replace(claim, host=move.target)
        arrays.add_claim(by_vm[move.vm])
        column = arrays.free[:, arrays.index[move.target]]
        assert (column >= 0).all(), f"{move} overcommits {move.target}"
        for name, group in (groups or {}).items():
            if group.hard and group.policy == "anti-affinity":
                assert arrays.group_counts.get(name, np.zeros(1)).max() <= 1
    return list(by_vm.values())


def spread_pp(hosts: list[HostCapacity], claims: list[Claim]) -> float:
    up = {h.name for h in hosts if h.state == "up"}
    values = [u for name, u in utilization(hosts, claims).items() if name in up]
    return max(values) - min(values)


class TestUtilization:
    def test_allocated_dominant_share(self) -> None:
        hosts = [host("a"), host("b")]
        claims = [vm("x", "a", cpus=8, memory_mib=1024), vm("y", "b", cpus=1, memory_mib=6144)]
        assert utilization(hosts, claims) == {"a": 50.0, "b": 75.0}  # 8/16 vCPU; 6/8 GiB

    def test_measured_load_replaces_allocation(self) -> None:
        hosts = [host("a"), host("b")]
        claims = [vm("x", "a", cpus=8, memory_mib=1024), vm("y", "b", cpus=1, memory_mib=1024)]
        measured = {"x": MeasuredLoad(cpus=0.4, memory_mib=512)}
        # x: 0.4 of 4 physical CPUs = 10 %, 512 of 8192 MiB = 6.25 % → 10 %
        assert utilization(hosts, claims, measured) == {"a": 10.0, "b": 12.5}


class TestBalance:
    def skewed(self) -> tuple[list[HostCapacity], list[Claim]]:
        hosts = [host(f"h{i}") for i in range(4)]
        claims = [vm(f"v{i}", "h0", cpus=2, memory_mib=1024) for i in range(7)]  # h0 at 87.5 %
        claims += [vm("w0", "h1", cpus=2, memory_mib=1024)]  # h1 at 12.5 %, h2 and h3 empty
        return hosts, claims

    def test_plan_brings_spread_under_threshold(self) -> None:
        hosts, claims = self.skewed()
        plan = plan_rebalance(hosts, claims)
        assert plan.threshold_pp == DEFAULT_THRESHOLD_PP == 10.0
        assert plan.spread_before_pp == 87.5
        assert plan.balanced and plan.stopped == "under threshold"
        after = apply(plan, hosts, claims)
        assert spread_pp(hosts, after) == pytest.approx(plan.spread_after_pp, abs=0.01)
        assert plan.spread_after_pp == 0.0  # 2-2-2-2: with 12.5 % VMs nothing else is ≤ 10 pp
        assert len(plan.moves) == 5  # 7-1-0-0 → 2-2-2-2 cannot take fewer
        assert all(m.source == "h0" for m in plan.moves)
        assert plan.utilization_after_pct == utilization(hosts, after)

    def test_fewest_moves_on_a_simple_case(self) -> None:
        hosts = [host(f"h{i}") for i in range(3)]
        claims = [vm(f"v{i}", "h0", cpus=1, memory_mib=1024) for i in range(6)]  # 12.5 % each
        plan = plan_rebalance(hosts, claims, threshold_pp=0.0)
        assert len(plan.moves) == 4  # 2-2-2 is four moves from 6-0-0, and no fewer
        assert plan.spread_after_pp == 0.0
        assert {m.target for m in plan.moves} == {"h1", "h2"}

    def test_balanced_pool_needs_no_moves(self) -> None:
        hosts = [host("a"), host("b")]
        plan = plan_rebalance(hosts, [vm("x", "a"), vm("y", "b")])
        assert plan.moves == () and plan.stopped == "under threshold"
        assert plan.spread_before_pp == plan.spread_after_pp == 0.0

    def test_threshold_unreachable_stops_with_best_effort(self) -> None:
        # One big VM: whichever host holds it is at 100 %.
        hosts = [host("a"), host("b")]
        plan = plan_rebalance(hosts, [vm("big", "a", cpus=16, memory_mib=8192)])
        assert plan.moves == ()
        assert plan.stopped == "no improving move"
        assert not plan.balanced

    def test_hosts_not_up_are_neither_counted_nor_targets(self) -> None:
        hosts = [host("a"), host("b"), host("drained", state="draining"),
                 host("fixing", state="maintenance")]
        claims = [vm(f"v{i}", "a", cpus=2, memory_mib=2048) for i in range(4)]
        plan = plan_rebalance(hosts, claims)
        assert plan.spread_before_pp == 100.0  # a vs b; the others are not counted
        assert {m.target for m in plan.moves} == {"b"}
        assert set(plan.utilization_after_pct) == {"a", "b"}
        apply(plan, hosts, claims)

    def test_vms_on_a_draining_host_are_left_to_the_drain(self) -> None:
        hosts = [host("a"), host("b"), host("old", state="draining")]
        claims = [vm(f"v{i}", "old") for i in range(4)] + [vm("x", "a", cpus=4, memory_mib=4096)]
        plan = plan_rebalance(hosts, claims)
        assert all(m.source != "old" for m in plan.moves)

    def test_capacity_under_ratios_is_respected(self) -> None:
        # b is nearly full of vCPUs (15 of 16) though its memory is idle: nothing fits there.
        hosts = [host("a"), host("b"), host("c", cpus=1)]
        claims = [vm(f"v{i}", "a", cpus=2, memory_mib=1024) for i in range(6)]
        claims += [vm("busy", "b", cpus=15, memory_mib=1)]
        plan = plan_rebalance(hosts, claims)
        apply(plan, hosts, claims)
        assert all(m.target != "b" for m in plan.moves)
        assert sum(1 for m in plan.moves if m.target == "c") <= 2  # 4 vCPUs on 1 CPU × 4.0

    def test_hard_anti_affinity_is_never_broken(self) -> None:
        web = Group("web", "anti-affinity")
        hosts = [host(f"h{i}") for i in range(3)]
        claims = [vm(f"web{i}", "h0", cpus=1, memory_mib=1024, group="web") for i in range(1)]
        claims += [vm(f"web{i}", f"h{i}", cpus=1, memory_mib=512, group="web")
                   for i in (1, 2)]
        claims += [vm(f"bulk{i}", "h0", cpus=2, memory_mib=1024) for i in range(5)]
        plan = plan_rebalance(hosts, claims, groups={"web": web})
        assert not any(m.vm.startswith("web") for m in plan.moves)
        apply(plan, hosts, claims, groups={"web": web})
        assert plan.spread_after_pp < plan.spread_before_pp

    def test_labels_accelerator_and_projects_are_respected(self) -> None:
        hosts = [host("a", labels={"zone": "x"}), host("b", labels={"zone": "y"}),
                 host("c", labels={"zone": "x"}, accel="tcg"),
                 host("d", labels={"zone": "x"}, allowed_projects=frozenset({"other"}))]
        claims = [vm(f"v{i}", "a", cpus=2, memory_mib=1024, project="p") for i in range(6)]
        constraints = {c.vm: PlacementRequest(c.vm, c.cpus, c.memory_mib, project="p",
                                              required_labels={"zone": "x"}, accel="kvm")
                       for c in claims}
        plan = plan_rebalance(hosts, claims, constraints=constraints)
        assert plan.moves == ()  # b lacks the label, c lacks KVM, d is another project's
        assert plan.stopped == "no improving move"
        loose = {k: replace(r, accel=None) for k, r in constraints.items()}
        plan = plan_rebalance(hosts, claims, constraints=loose)
        assert plan.moves and {m.target for m in plan.moves} == {"c"}
        apply(plan, hosts, claims, constraints=loose)

    def test_targets_beyond_the_least_loaded_are_found(self, monkeypatch) -> None:
        # One "least loaded" target per step (b), and nothing may move there: a's VMs need
        # zone=x, b's are pinned to it. The planner must look at the whole pool to find c.
        monkeypatch.setattr(rebalance, "TARGETS_PER_STEP", 1)
        hosts = [host("a", labels={"zone": "x"}), host("b", labels={"pin": "b"}),
                 host("c", labels={"zone": "x"})]
        claims = [vm(f"a{i}", "a", cpus=1, memory_mib=256) for i in range(12)]  # 1 vCPU = 6.25 %; a at 75 %
        claims += [vm(f"b{i}", "b", cpus=1, memory_mib=256) for i in range(4)]  # 25 %
        claims += [vm(f"c{i}", "c", cpus=1, memory_mib=256) for i in range(6)]  # 37.5 %
        constraints = {c.vm: PlacementRequest(
            c.vm, c.cpus, c.memory_mib,
            required_labels={"pin": "b"} if c.host == "b" else {"zone": "x"}) for c in claims}
        plan = plan_rebalance(hosts, claims, constraints=constraints)
        assert [(m.source, m.target) for m in plan.moves] == [("a", "c")] * 3  # 9 and 9
        assert plan.spread_after_pp == 31.25  # 56.25 % − 25 %: b can take nothing
        assert plan.stopped == "no improving move"
        apply(plan, hosts, claims, constraints=constraints)

    def test_measured_load_drives_the_plan(self) -> None:
        hosts = [host("a"), host("b")]
        claims = [vm("hot1", "a", cpus=2), vm("hot2", "a", cpus=2),
                  vm("idle1", "b", cpus=2), vm("idle2", "b", cpus=2)]
        assert plan_rebalance(hosts, claims).moves == ()  # balanced on paper
        measured = {"hot1": MeasuredLoad(1.6, 1024), "hot2": MeasuredLoad(1.6, 1024),
                    "idle1": MeasuredLoad(0.1, 1024), "idle2": MeasuredLoad(0.1, 1024)}
        plan = plan_rebalance(hosts, claims, measured=measured)
        # a: 3.2 of 4 CPUs busy = 80 %; b: CPU 5 %, memory 2048/8192 = 25 % → spread 55 pp
        assert plan.spread_before_pp == pytest.approx(55.0)
        assert [(m.vm, m.target) for m in plan.moves] == [("hot1", "b")] or [
            (m.vm, m.target) for m in plan.moves] == [("hot2", "b")]
        assert len(plan.moves) == 1
        assert plan.spread_after_pp == pytest.approx(5.0)  # 40 % vs 45 %

    def test_move_limit(self) -> None:
        hosts = [host(f"h{i}") for i in range(3)]
        claims = [vm(f"v{i}", "h0") for i in range(6)]
        plan = plan_rebalance(hosts, claims, threshold_pp=0.0, max_moves=1)
        assert len(plan.moves) == 1 and plan.stopped == "move limit"

    def test_deterministic(self) -> None:
        hosts, claims = self.skewed()
        assert plan_rebalance(hosts, claims) == plan_rebalance(hosts, claims)

    def test_group_must_be_given(self) -> None:
        with pytest.raises(InvalidRequest, match="group 'web'"):
            plan_rebalance([host("a")], [vm("x", "a", group="web")])

    def test_negative_threshold(self) -> None:
        with pytest.raises(InvalidRequest, match="negative"):
            plan_rebalance([host("a")], [], threshold_pp=-1)

    def test_larger_pool_stays_valid(self) -> None:
        rng = np.random.default_rng(4)
        hosts = [host(f"h{i}", cpus=16, memory_mib=65536) for i in range(40)]
        claims = []
        for i in range(400):
            hot = i < 150  # 150 of the VMs on the first 5 hosts
            where = int(rng.integers(0, 5)) if hot else int(rng.integers(0, 40))
            claims.append(vm(f"v{i}", f"h{where}", cpus=int(rng.choice([1, 2])),
                             memory_mib=int(rng.choice([512, 1024, 2048]))))
        plan = plan_rebalance(hosts, claims)
        after = apply(plan, hosts, claims)
        assert plan.balanced
        assert spread_pp(hosts, after) == pytest.approx(plan.spread_after_pp, abs=0.01)
        assert len(plan.moves) < 150


class TestConsolidate:
    def test_frees_the_least_used_hosts(self) -> None:
        hosts = [host(f"h{i}") for i in range(4)]
        claims = [vm("a1", "h0", cpus=4, memory_mib=4096), vm("a2", "h0", cpus=2, memory_mib=1024),
                  vm("b1", "h1", cpus=2, memory_mib=1024), vm("c1", "h2", cpus=1, memory_mib=512),
                  vm("d1", "h3", cpus=1, memory_mib=1024)]
        plan = plan_consolidation(hosts, claims)
        assert plan.mode == "consolidate"
        assert set(plan.hosts_freed) == {"h1", "h2", "h3"}
        after = apply(plan, hosts, claims)
        assert {c.host for c in after} == {"h0"}
        assert len(plan.moves) == 3

    def test_a_host_that_cannot_be_emptied_is_left_alone(self) -> None:
        hosts = [host("a"), host("b")]
        claims = [vm("x", "a", cpus=10, memory_mib=6144), vm("y", "b", cpus=10, memory_mib=6144)]
        plan = plan_consolidation(hosts, claims)
        assert plan.moves == () and plan.hosts_freed == ()

    def test_already_empty_and_freed_hosts_take_nothing(self) -> None:
        hosts = [host("empty"), host("a"), host("b"), host("c")]
        claims = [vm("x", "a", memory_mib=1024), vm("y", "b", memory_mib=2048),
                  vm("z", "c", memory_mib=4096)]
        plan = plan_consolidation(hosts, claims)
        assert "empty" not in plan.hosts_freed
        assert all(m.target != "empty" for m in plan.moves)
        freed = set(plan.hosts_freed)
        assert all(m.target not in freed for m in plan.moves)
        after = apply(plan, hosts, claims)
        assert not freed & {c.host for c in after}

    def test_hard_anti_affinity_keeps_hosts_in_use(self) -> None:
        web = Group("web", "anti-affinity")
        hosts = [host(f"h{i}") for i in range(3)]
        claims = [vm(f"w{i}", f"h{i}", group="web") for i in range(3)]
        plan = plan_consolidation(hosts, claims, groups={"web": web})
        assert plan.moves == () and plan.hosts_freed == ()
        soft = Group("web", "anti-affinity", hard=False)
        plan = plan_consolidation(hosts, claims, groups={"web": soft})
        assert len(plan.hosts_freed) == 2

    def test_hard_affinity_members_are_never_split(self) -> None:
        db = Group("db", "affinity")
        hosts = [host("a"), host("b")]
        claims = [vm("d1", "a", group="db"), vm("d2", "a", group="db"),
                  vm("big", "b", cpus=4, memory_mib=4096)]
        plan = plan_consolidation(hosts, claims, groups={"db": db})
        # a is the least used, but its members can only go where a member is: a itself.
        assert plan.hosts_freed == ("b",)
        after = apply(plan, hosts, claims)
        assert {c.host for c in after} == {"a"}

    def test_max_hosts(self) -> None:
        hosts = [host(f"h{i}") for i in range(4)]
        claims = [vm(f"v{i}", f"h{i}") for i in range(4)]
        plan = plan_consolidation(hosts, claims, max_hosts=1)
        assert len(plan.hosts_freed) == 1 and plan.stopped == "host limit"


def test_migration_applier_is_the_one_interface() -> None:
    """A plan is applied through ``migrate(vm, to_host)``, in order."""

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str]] = []

        def migrate(self, vm: str, to_host: str) -> None:
            self.calls.append((vm, to_host))

    hosts = [host("a"), host("b")]
    plan = plan_rebalance(hosts, [vm(f"v{i}", "a", cpus=4, memory_mib=2048) for i in range(4)])
    applier: MigrationApplier = Recorder()
    for move in plan.moves:
        applier.migrate(move.vm, move.target)
    assert applier.calls == [(m.vm, m.target) for m in plan.moves]  # type: ignore[attr-defined]
    assert len(applier.calls) == 2  # type: ignore[attr-defined]
