"""Placement decisions: exact hosts under each weigher, groups, determinism, retries."""

from __future__ import annotations

import numpy as np
import pytest

from virtpool.control.scheduler import HostArrays, place, request_seed
from virtpool.model.errors import InvalidRequest
from virtpool.model.resources import Claim, Group, HostCapacity, PlacementRequest


def host(name: str, cpus: int = 4, memory_mib: int = 8192, disk_mib: int = 0,
         **kw: object) -> HostCapacity:
    return HostCapacity(name, cpus=cpus, memory_mib=memory_mib, disk_mib=disk_mib, **kw)


def req(vm: str = "vm", cpus: int = 1, memory_mib: int = 1024, disk_mib: int = 0,
        **kw: object) -> PlacementRequest:
    return PlacementRequest(vm, cpus=cpus, memory_mib=memory_mib, disk_mib=disk_mib, **kw)


def three_hosts(extra: list[Claim] | None = None) -> HostArrays:
    """16 vCPU / 8192 MiB each (no disk), loaded so that every weigher picks another host.

    For a 1 vCPU / 1024 MiB request, after placement:

    ====  ==========  ====================  ==========================
    host  used        Σ free fraction       dominant utilisation
    ====  ==========  ====================  ==========================
    x     12, 0       3/16 + 7/8 = 1.0625   13/16 = 0.8125
    y     5, 4096     10/16 + 3/8 = 1.0     5120/8192 = 0.625
    z     8, 5120     7/16 + 2/8 = 0.6875   6144/8192 = 0.75
    ====  ==========  ====================  ==========================

    spread → x (most free), pack → z (least free), balanced → y (lowest dominant share).
    """
    claims = [Claim("cx", "x", 12, 0, 0), Claim("cy", "y", 5, 4096, 0),
              Claim("cz", "z", 8, 5120, 0)] + (extra or [])
    return HostArrays.build([host("x"), host("y"), host("z")], claims)


class TestWeighers:
    @pytest.mark.parametrize(("weigher", "expected"),
                             [("spread", "x"), ("pack", "z"), ("balanced", "y")])
    def test_each_weigher_picks_its_host(self, weigher: str, expected: str) -> None:
        decision = place(three_hosts(), req(), weigher=weigher)
        assert decision.host == expected
        assert decision.weigher == weigher
        assert decision.candidates == 3

    def test_default_is_spread(self) -> None:
        assert place(three_hosts(), req()).weigher == "spread"

    def test_request_overrides_pool_weigher(self) -> None:
        decision = place(three_hosts(), req(weigher="pack"), weigher="spread")
        assert (decision.host, decision.weigher) == ("z", "pack")

    def test_unknown_pool_weigher(self) -> None:
        with pytest.raises(InvalidRequest, match="unknown weigher"):
            place(three_hosts(), req(), weigher="random")

    def test_pack_fills_one_host_before_the_next(self) -> None:
        arrays = HostArrays.build([host("a"), host("b"), host("c")], [])
        chosen = []
        for i in range(8):  # 8 × 2048 MiB = two full hosts' memory
            decision = place(arrays, req(f"v{i}", memory_mib=2048), weigher="pack")
            arrays.add_claim(decision.claim())
            chosen.append(decision.host)
        assert chosen[:4] == [chosen[0]] * 4
        assert len(set(chosen[4:])) == 1 and chosen[4] != chosen[0]

    def test_spread_round_robins_identical_hosts(self) -> None:
        arrays = HostArrays.build([host("a"), host("b"), host("c")], [])
        chosen = []
        for i in range(6):
            decision = place(arrays, req(f"v{i}"))
            arrays.add_claim(decision.claim())
            chosen.append(decision.host)
        assert sorted(chosen) == ["a", "a", "b", "b", "c", "c"]

    def test_balanced_sends_memory_heavy_vm_where_memory_is_idle(self) -> None:
        arrays = HostArrays.build(
            [host("cpu-busy"), host("mem-busy")],
            [Claim("c", "cpu-busy", 10, 1024, 0), Claim("m", "mem-busy", 1, 5120, 0)])
        big_memory = req(cpus=1, memory_mib=2048)
        # after: cpu-busy max(11/16, 3072/8192) = 0.69; mem-busy max(2/16, 7168/8192) = 0.875
        assert place(arrays, big_memory, weigher="balanced").host == "cpu-busy"
        # spread sums free fractions: cpu-busy 5/16 + 5/8 = 0.94 < mem-busy 14/16 + 1/8 = 1.0
        assert place(arrays, big_memory, weigher="spread").host == "mem-busy"


class TestSoftGroups:
    def test_soft_anti_affinity_outweighs_load(self) -> None:
        web = Group("web", "anti-affinity", hard=False)
        arrays = three_hosts([Claim("w1", "x", 0, 0, 0, group="web")])
        assert place(arrays, req(group=web)).host == "y"  # x is emptiest but holds a member

    def test_soft_anti_affinity_yields_when_every_host_has_a_member(self) -> None:
        web = Group("web", "anti-affinity", hard=False)
        members = [Claim(f"w{h}", h, 0, 0, 0, group="web") for h in "xyz"]
        decision = place(three_hosts(members), req(group=web))
        assert decision.host == "x"  # placed anyway, by load
        assert decision.removed["group"] == 0

    def test_soft_anti_affinity_prefers_fewest_members(self) -> None:
        web = Group("web", "anti-affinity", hard=False)
        members = [Claim("w1", "x", 0, 0, 0, group="web"), Claim("w2", "x", 0, 0, 0, group="web"),
                   Claim("w3", "z", 0, 0, 0, group="web"), Claim("w4", "y", 0, 0, 0, group="web"),
                   Claim("w5", "y", 0, 0, 0, group="web")]
        assert place(three_hosts(members), req(group=web)).host == "z"

    def test_soft_affinity_prefers_a_host_with_a_member(self) -> None:
        db = Group("db", "affinity", hard=False)
        arrays = three_hosts([Claim("d1", "z", 0, 0, 0, group="db")])
        assert place(arrays, req(group=db)).host == "z"  # the fullest, but the member is there

    def test_soft_affinity_yields_to_capacity(self) -> None:
        db = Group("db", "affinity", hard=False)
        arrays = three_hosts([Claim("d1", "z", 0, 3072, 0, group="db")])  # z now full
        decision = place(arrays, req(group=db))
        assert decision.host == "x"
        assert decision.removed["memory"] == 1


class TestHardRules:
    def test_hard_anti_affinity_is_never_violated(self) -> None:
        web = Group("web", "anti-affinity")
        arrays = HostArrays.build([host(f"h{i}") for i in range(4)], [])
        hosts = []
        for i in range(4):
            decision = place(arrays, req(f"web{i}", group=web), weigher="pack")
            arrays.add_claim(decision.claim())
            hosts.append(decision.host)
        assert sorted(hosts) == ["h0", "h1", "h2", "h3"]
        fifth = place(arrays, req("web4", group=web), weigher="pack")
        assert fifth.host is None
        assert fifth.removed["group"] == 4

    def test_hard_affinity_follows_the_first_member(self) -> None:
        db = Group("db", "affinity")
        arrays = HostArrays.build([host(f"h{i}") for i in range(4)], [])
        first = place(arrays, req("db0", group=db))
        arrays.add_claim(first.claim())
        for i in range(1, 4):
            decision = place(arrays, req(f"db{i}", group=db))
            assert decision.host == first.host
            arrays.add_claim(decision.claim())

    @pytest.mark.parametrize("state", ["draining", "maintenance", "down"])
    def test_hosts_not_up_are_never_chosen(self, state: str) -> None:
        # The host that is not up is the emptiest and the biggest: every weigher would love it.
        hosts = [host("idle", cpus=64, memory_mib=65536, state=state), host("a"), host("b")]
        arrays = HostArrays.build(hosts, [])
        for i in range(30):
            decision = place(arrays, req(f"v{i}", memory_mib=256),
                             weigher=("spread", "pack", "balanced")[i % 3])
            assert decision.host in {"a", "b"}
            assert decision.removed["state"] == 1
            arrays.add_claim(decision.claim())

    def test_ratio_sets_how_many_vcpus_fit(self) -> None:
        arrays = HostArrays.build([host("a", cpus=4)], [])  # 4 CPUs × 4.0 = 16 vCPUs
        for i in range(16):
            decision = place(arrays, req(f"v{i}", memory_mib=1))
            assert decision.host == "a"
            arrays.add_claim(decision.claim())
        refused = place(arrays, req("v16", memory_mib=1))
        assert refused.host is None and refused.removed["cpu"] == 1
        assert arrays.allocated[0, 0] == 16

    def test_reservation_is_never_handed_out(self) -> None:
        arrays = HostArrays.build([host("a", memory_mib=8192, reserved_memory_mib=2048)], [])
        assert place(arrays, req(memory_mib=6144)).host == "a"
        assert place(arrays, req(memory_mib=6145)).host is None

    def test_refused_decision_has_no_claim(self) -> None:
        decision = place(HostArrays.build([], []), req())
        assert not decision.placed and decision.hosts_total == 0
        with pytest.raises(InvalidRequest, match="no host was chosen"):
            decision.claim()


class TestDeterminism:
    def identical(self, n: int = 20) -> HostArrays:
        return HostArrays.build([host(f"h{i:02}") for i in range(n)], [])

    def test_same_request_same_host(self) -> None:
        first = place(self.identical(), req("web3"))
        for _ in range(5):
            again = place(self.identical(), req("web3"))
            assert (again.host, again.seed) == (first.host, first.seed)

    def test_seed_is_stable_across_processes(self) -> None:
        # blake2b of the name, not Python's salted hash(): pinned so a replay years later works
        assert request_seed(req("web3")) == 0x39B5DB44B09DDA88
        assert request_seed(req("web3")) == request_seed(req("web3", cpus=4))

    def test_ties_spread_over_hosts_by_name(self) -> None:
        chosen = {place(self.identical(), req(f"vm{i}")).host for i in range(40)}
        assert len(chosen) > 5

    def test_explicit_seed_replays(self) -> None:
        arrays = self.identical()
        hosts = {place(arrays, req("x"), seed=s).host for s in range(20)}
        assert len(hosts) > 1
        assert place(arrays, req("x"), seed=7).host == place(arrays, req("y"), seed=7).host

    def test_place_does_not_change_the_arrays(self) -> None:
        arrays = three_hosts()
        free = arrays.free.copy()
        place(arrays, req(group=Group("g", "anti-affinity")))
        assert np.array_equal(arrays.free, free)
        assert "g" not in arrays.group_counts


class TestRetry:
    def test_exclude_moves_to_the_next_best(self) -> None:
        arrays = three_hosts()
        decision = place(arrays, req(), exclude=[arrays.index["x"]])
        assert decision.host == "y"
        assert decision.removed["excluded"] == 1

    def test_lost_race_retried_on_fresh_figures(self) -> None:
        """The store's loop: place, claim fails on generation, reload that host, place again."""
        arrays = three_hosts()
        first = place(arrays, req("mine", memory_mib=4096))
        assert first.host == "x"
        # Meanwhile another server claimed 6 GiB on x: the store reloads x's row and claims.
        fresh = [Claim("cx", "x", 12, 0, 0), Claim("theirs", "x", 1, 6144, 0)]
        arrays.reload_host(first.host_index, host("x"), fresh)
        second = place(arrays, req("mine", memory_mib=4096))
        assert second.host == "y"  # x no longer fits; nothing double-booked
        assert second.removed["memory"] == 2  # x (6144 used) and z (5120 used)

    def test_exclude_everything(self) -> None:
        arrays = three_hosts()
        decision = place(arrays, req(), exclude=range(3))
        assert decision.host is None and decision.removed["excluded"] == 3


def test_a_reloaded_host_is_placed_on_its_new_state_labels_and_size() -> None:
    # The same request shape twice around a reload: the second decision must not reuse what
    # the static filters said about the host before it changed.
    arrays = HostArrays.build([host("x", cpus=8, labels={"zone": "a"}), host("y", cpus=8)], [])
    shape = req("v1", cpus=6, required_labels={"zone": "a"})
    first = place(arrays, shape)
    assert first.host == "x"
    arrays.reload_host(0, host("x", cpus=8, labels={"zone": "a"}, state="draining"), [])
    refused = place(arrays, req("v2", cpus=6, required_labels={"zone": "a"}))
    assert refused.host is None
    assert refused.removed["state"] == 1 and refused.removed["labels"] == 1
    arrays.reload_host(0, host("x", cpus=4, labels={"zone": "a"}), [])
    arrays.reload_host(1, host("y", cpus=8, labels={"zone": "a"}), [])
    again = place(arrays, req("v3", cpus=6, required_labels={"zone": "a"}))
    assert again.host == "y"
    assert again.removed["size"] == 1 and again.removed["state"] == 0
