"""The resource model, the host arrays and each placement filter, checked by their counters."""

from __future__ import annotations

import numpy as np
import pytest

from virtpool.control.scheduler import FILTER_NAMES, HostArrays, feasible, place
from virtpool.control.scheduler.hosts import CPU, DISK, MEMORY
from virtpool.model.errors import InvalidRequest
from virtpool.model.resources import (
    Claim,
    Group,
    HostCapacity,
    PlacementRequest,
    Ratios,
    capacity_under_ratio,
)


def host(name: str, cpus: int = 4, memory_mib: int = 8192, disk_mib: int = 10240,
         **kw: object) -> HostCapacity:
    return HostCapacity(name, cpus=cpus, memory_mib=memory_mib, disk_mib=disk_mib, **kw)


def req(vm: str = "vm", cpus: int = 1, memory_mib: int = 512, disk_mib: int = 0,
        **kw: object) -> PlacementRequest:
    return PlacementRequest(vm, cpus=cpus, memory_mib=memory_mib, disk_mib=disk_mib, **kw)


def removed(arrays: HostArrays, request: PlacementRequest, exclude=()) -> dict[str, int]:
    """Only the non-zero counters, to keep the assertions short."""
    _, counts = feasible(arrays, request, exclude)
    assert list(counts) == list(FILTER_NAMES)  # every stage reported, in pipeline order
    return {name: n for name, n in counts.items() if n}


class TestRatios:
    def test_default_cpu_ratio_gives_four_vcpus_per_cpu(self) -> None:
        assert host("a", cpus=4).capacity().cpus == 16  # 4 CPUs × 4.0

    def test_reservation_comes_off_before_the_ratio(self) -> None:
        h = host("a", cpus=8, reserved_cpus=2, memory_mib=8192, reserved_memory_mib=1024,
                 disk_mib=1000, reserved_disk_mib=100, ratios=Ratios(disk=2.0))
        cap = h.capacity()
        assert (cap.cpus, cap.memory_mib, cap.disk_mib) == ((8 - 2) * 4, 8192 - 1024, 900 * 2)
        assert h.usable().cpus == 6

    def test_memory_overcommit_with_balloon(self) -> None:
        h = host("a", memory_mib=8192, reserved_memory_mib=1024,
                 ratios=Ratios(memory=1.5), balloon=True)
        assert h.capacity().memory_mib == 10752  # (8192 - 1024) × 1.5

    def test_memory_overcommit_without_balloon_is_refused(self) -> None:
        with pytest.raises(InvalidRequest, match="needs ballooning") as err:
            host("a", ratios=Ratios(memory=1.5))
        assert "host 'a'" in str(err.value)
        assert err.value.hint and "ballooning" in err.value.hint

    def test_memory_undercommit_without_balloon_is_fine(self) -> None:
        assert host("a", memory_mib=1000, ratios=Ratios(memory=0.5)).capacity().memory_mib == 500

    def test_capacity_rounds_down_but_not_below_what_was_meant(self) -> None:
        assert 100 * 0.29 < 29  # binary floating point…
        assert capacity_under_ratio(100, 0, 0.29) == 29  # …does not cost a unit
        assert capacity_under_ratio(3, 0, 1.5) == 4  # 4.5 vCPUs → 4 whole ones

    @pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), 65.0])
    def test_ratio_out_of_range(self, bad: float) -> None:
        with pytest.raises(InvalidRequest, match="cpu ratio"):
            Ratios(cpu=bad)

    def test_reservation_larger_than_host(self) -> None:
        with pytest.raises(InvalidRequest, match="reserves 8"):
            host("a", cpus=4, reserved_cpus=8)

    @pytest.mark.parametrize("kw", [{"state": "sleeping"}, {"accel": "hvf"},
                                    {"labels": {"zone": 1}}, {"cpus": -1}, {"cpus": 1.5}])
    def test_bad_host(self, kw: dict) -> None:
        with pytest.raises(InvalidRequest):
            host("a", **kw)

    @pytest.mark.parametrize("kw", [{"cpus": 0}, {"memory_mib": 0}, {"disk_mib": -1},
                                    {"accel": "xen"}, {"weigher": "random"}])
    def test_bad_request(self, kw: dict) -> None:
        with pytest.raises(InvalidRequest):
            req(**kw)

    def test_bad_group_policy(self) -> None:
        with pytest.raises(InvalidRequest, match="unknown policy"):
            Group("web", "apart")  # type: ignore[arg-type]


class TestHostArrays:
    def test_capacity_allocated_free(self) -> None:
        arrays = HostArrays.build(
            [host("a"), host("b", cpus=2)],
            [Claim("v1", "a", 3, 1024, 100), Claim("v2", "a", 1, 512, 0),
             Claim("v3", "b", 8, 8192, 10240)])
        assert arrays.capacity[:, 0].tolist() == [16, 8192, 10240]
        assert arrays.allocated[:, 0].tolist() == [4, 1536, 100]
        assert arrays.free[:, 0].tolist() == [12, 6656, 10140]
        assert arrays.free[:, 1].tolist() == [0, 0, 0]
        assert arrays.utilization[CPU, 0] == pytest.approx(4 / 16)
        assert arrays.free_fraction_sum[1] == 0.0
        assert arrays.claims_per_host.tolist() == [2, 1]

    def test_group_member_counts_from_claims(self) -> None:
        arrays = HostArrays.build(
            [host("a"), host("b"), host("c")],
            [Claim("w1", "a", 1, 1, 0, group="web"), Claim("w2", "a", 1, 1, 0, group="web"),
             Claim("w3", "c", 1, 1, 0, group="web"), Claim("d1", "b", 1, 1, 0, group="db")])
        assert arrays.group_counts["web"].tolist() == [2, 0, 1]
        assert arrays.group_counts["db"].tolist() == [0, 1, 0]
        assert arrays.members("nope") is None

    def test_claim_on_unknown_host(self) -> None:
        with pytest.raises(InvalidRequest, match="not in the inventory"):
            HostArrays.build([host("a")], [Claim("v", "b", 1, 1, 0)])

    def test_duplicate_host(self) -> None:
        with pytest.raises(InvalidRequest, match="twice"):
            HostArrays.build([host("a"), host("a")], [])

    def test_add_and_remove_claim_keep_figures_exact(self) -> None:
        arrays = HostArrays.build([host("a"), host("b")], [])
        claim = Claim("v", "b", 2, 1024, 512, group="g")
        assert arrays.add_claim(claim) == 1
        assert arrays.free[:, 1].tolist() == [14, 7168, 9728]
        assert arrays.group_counts["g"].tolist() == [0, 1]
        fresh = HostArrays.build([host("a"), host("b")], [claim])
        assert np.array_equal(arrays.free_fraction_sum, fresh.free_fraction_sum)
        assert np.array_equal(arrays.utilization, fresh.utilization)
        arrays.remove_claim(claim)
        assert arrays.free[:, 1].tolist() == [16, 8192, 10240]
        assert arrays.group_counts["g"].tolist() == [0, 0]

    def test_reload_host_replaces_figures_and_cached_masks(self) -> None:
        arrays = HostArrays.build([host("a", labels={"zone": "x"}), host("b")], [])
        assert arrays.label_mask("zone", "x").tolist() == [True, False]
        assert arrays.up_mask().tolist() == [True, True]
        arrays.reload_host(1, host("b", cpus=8, labels={"zone": "x"}, state="draining"),
                           [Claim("v", "b", 4, 1024, 0, group="g")])
        assert arrays.label_mask("zone", "x").tolist() == [True, True]
        assert arrays.up_mask().tolist() == [True, False]
        assert arrays.capacity[CPU, 1] == 32
        assert arrays.free[:, 1].tolist() == [28, 7168, 10240]
        assert arrays.group_counts["g"].tolist() == [0, 1]

    def test_reload_host_refuses_claims_of_another_host(self) -> None:
        arrays = HostArrays.build([host("a"), host("b")], [])
        with pytest.raises(InvalidRequest, match="not 'b'"):
            arrays.reload_host(1, host("b"), [Claim("v", "a", 1, 1, 0)])


class TestFilters:
    def test_state_removes_every_host_that_is_not_up(self) -> None:
        arrays = HostArrays.build([host("up"), host("dr", state="draining"),
                                   host("mt", state="maintenance"), host("dn", state="down")],
                                  [])
        assert removed(arrays, req()) == {"state": 3}
        assert place(arrays, req()).host == "up"

    def test_accelerator(self) -> None:
        arrays = HostArrays.build([host("k"), host("t1", accel="tcg"), host("t2", accel="tcg")],
                                  [])
        assert removed(arrays, req(accel="kvm")) == {"accel": 2}
        assert removed(arrays, req(accel="tcg")) == {}  # KVM hosts emulate too
        assert removed(arrays, req()) == {}

    def test_required_labels_all_must_match(self) -> None:
        arrays = HostArrays.build([
            host("a", labels={"zone": "x", "disk": "ssd"}),
            host("b", labels={"zone": "x"}),
            host("c", labels={"zone": "y", "disk": "ssd"}),
            host("d")], [])
        assert removed(arrays, req(required_labels={"zone": "x"})) == {"labels": 2}
        assert removed(arrays, req(required_labels={"zone": "x", "disk": "ssd"})) == {"labels": 3}
        assert place(arrays, req(required_labels={"zone": "x", "disk": "ssd"})).host == "a"

    def test_project_restriction(self) -> None:
        arrays = HostArrays.build([host("open"), host("red", allowed_projects=frozenset({"red"})),
                                   host("blue", allowed_projects=frozenset({"blue"}))], [])
        assert removed(arrays, req(project="red")) == {"project": 1}
        assert removed(arrays, req(project="green")) == {"project": 2}
        assert removed(arrays, req()) == {"project": 2}  # no project: only open hosts

    def test_capacity_reasons_are_separate_per_resource(self) -> None:
        arrays = HostArrays.build(
            [host("cpu-full"), host("mem-full"), host("disk-full"), host("room")],
            [Claim("c", "cpu-full", 16, 0, 0), Claim("m", "mem-full", 0, 8192, 0),
             Claim("d", "disk-full", 0, 0, 10240)])
        assert removed(arrays, req(cpus=1, memory_mib=1, disk_mib=1)) == {
            "cpu": 1, "memory": 1, "disk": 1}
        assert place(arrays, req(cpus=1, memory_mib=1, disk_mib=1)).host == "room"

    def test_capacity_boundary_is_inclusive(self) -> None:
        arrays = HostArrays.build([host("a")], [Claim("x", "a", 15, 0, 0)])
        assert removed(arrays, req(cpus=1)) == {}
        assert removed(arrays, req(cpus=2)) == {"cpu": 1}

    def test_host_is_charged_to_the_first_stage_that_removes_it(self) -> None:
        # Down *and* full: counted once, as down, the more fundamental reason.
        arrays = HostArrays.build([host("a", state="down"), host("b")],
                                  [Claim("x", "a", 16, 8192, 0)])
        assert removed(arrays, req()) == {"state": 1}

    def test_hard_anti_affinity_removes_hosts_with_members(self) -> None:
        web = Group("web", "anti-affinity")
        arrays = HostArrays.build([host("a"), host("b"), host("c")],
                                  [Claim("w1", "a", 1, 1, 0, group="web"),
                                   Claim("w2", "b", 1, 1, 0, group="web")])
        assert removed(arrays, req(group=web)) == {"group": 2}
        assert place(arrays, req(group=web)).host == "c"

    def test_hard_affinity_keeps_members_together(self) -> None:
        db = Group("db", "affinity")
        arrays = HostArrays.build([host("a"), host("b"), host("c")],
                                  [Claim("d1", "b", 1, 1, 0, group="db")])
        assert removed(arrays, req(group=db)) == {"group": 2}
        assert place(arrays, req(group=db)).host == "b"

    def test_hard_affinity_first_member_goes_anywhere(self) -> None:
        arrays = HostArrays.build([host("a"), host("b")], [])
        assert removed(arrays, req(group=Group("db", "affinity"))) == {}
        # A group whose members all left counts as empty too.
        arrays.add_claim(Claim("d1", "a", 1, 1, 0, group="db"))
        arrays.remove_claim(Claim("d1", "a", 1, 1, 0, group="db"))
        assert removed(arrays, req(group=Group("db", "affinity"))) == {}

    def test_soft_groups_filter_nothing(self) -> None:
        arrays = HostArrays.build([host("a")], [Claim("w1", "a", 1, 1, 0, group="web")])
        assert removed(arrays, req(group=Group("web", "anti-affinity", hard=False))) == {}

    def test_excluded_hosts_are_counted_first(self) -> None:
        arrays = HostArrays.build([host("a"), host("b", state="down"), host("c")], [])
        assert removed(arrays, req(), exclude=[0, 1]) == {"excluded": 2}
        with pytest.raises(InvalidRequest, match="out of range"):
            feasible(arrays, req(), exclude=[3])

    def test_filters_do_not_touch_cached_masks(self) -> None:
        arrays = HostArrays.build([host("a", labels={"k": "v"}), host("b", labels={"k": "v"})],
                                  [Claim("x", "a", 16, 0, 0)])
        before = arrays.label_mask("k", "v").copy()
        feasible(arrays, req(required_labels={"k": "v"}))
        assert np.array_equal(arrays.label_mask("k", "v"), before)
        assert arrays.up_mask().all()

    def test_filters_see_the_resource_rows_they_name(self) -> None:
        arrays = HostArrays.build([host("a", cpus=1, memory_mib=2, disk_mib=3)], [])
        assert (arrays.free[CPU, 0], arrays.free[MEMORY, 0], arrays.free[DISK, 0]) == (4, 2, 3)
