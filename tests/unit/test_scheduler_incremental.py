"""The incremental ``spread`` decision is the from-scratch decision, whatever happened before.

One long-lived ``HostArrays`` goes through a seeded random mix of placements, releases, usage
added by the caller, reloads of a host (usage only, or new attributes) and whole new inventories
(hosts added and removed). Before each step, every request is placed on it (``place``, which
decides from its kept tallies and ranking where it can) and on arrays built afresh from the same
hosts and claims with ``incremental=False`` (every host scored): the decisions, counters and
explanations must be identical. Asked for the host only (``counts=False``, as the control plane
asks), the incremental path must choose the same host as from scratch.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from virtpool.control.scheduler import HostArrays, explain, place
from virtpool.control.scheduler import pipeline
from virtpool.model.resources import Claim, Group, HostCapacity, PlacementRequest, Ratios

SHAPES = ((16, 65536, 1 << 20), (32, 131072, 1 << 20), (8, 32768, 1 << 19))


def random_host(rng: random.Random, name: str) -> HostCapacity:
    cpus, memory, disk = rng.choice(SHAPES)
    return HostCapacity(
        name, cpus=cpus, memory_mib=memory, disk_mib=disk, reserved_cpus=1,
        labels={"zone": rng.choice("ab"), **({"gpu": "yes"} if rng.random() < 0.2 else {})},
        state=rng.choice(("up",) * 8 + ("draining", "down")),
        accel=rng.choice(("kvm",) * 4 + ("tcg",)),
        allowed_projects=frozenset({"p1"}) if rng.random() < 0.1 else None)


def random_request(rng: random.Random, n: int) -> PlacementRequest:
    cpus = rng.choice((1, 2, 4, 8, 16, 40))
    extra: dict = {}
    roll = rng.random()
    if roll < 0.15:
        extra["required_labels"] = {"zone": rng.choice("ab")}
    elif roll < 0.2:
        extra["required_labels"] = {"gpu": "yes"}
    elif roll < 0.25:
        extra["accel"] = "kvm"
    elif roll < 0.3:
        extra["project"] = "p1"
    elif roll < 0.35:
        extra["group"] = Group("web", "anti-affinity", hard=rng.random() < 0.5)
    elif roll < 0.38:
        extra["weigher"] = rng.choice(("pack", "balanced"))
    # Few memory sizes, so that request shapes repeat and their tallies are reused.
    return PlacementRequest(f"vm{n}", cpus=cpus, memory_mib=cpus * rng.choice((1024, 4096)),
                            disk_mib=rng.choice((0, 10240, 102400)), **extra)


def same_decisions(arrays: HostArrays, hosts: list[HostCapacity], claims: list[Claim],
                   requests: list[PlacementRequest], counts: bool = True) -> None:
    fresh = HostArrays.build(hosts, claims)
    for request in requests:
        kept = place(arrays, request, counts=counts)
        scratch = place(fresh, request, incremental=False)
        if kept.candidates is None:  # placed without counting: the same host, nothing else
            assert not counts and kept.placed
            assert (kept.host_index, kept.host, kept.seed) == (
                scratch.host_index, scratch.host, scratch.seed), request
            assert kept.removed == {}
            assert explain(kept) == f"placed '{request.vm}' on host '{scratch.host}' (spread)"
            continue
        assert kept == scratch, request
        assert explain(kept) == explain(scratch)


class Spy:
    """Counts the decisions the incremental path took (so the test cannot pass by never
    taking it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.taken = self.declined = 0
        real = pipeline._place_incrementally

        def spied(*args: object) -> object:
            decision = real(*args)  # type: ignore[arg-type]
            if decision is None:
                self.declined += 1
            else:
                self.taken += 1
            return decision

        monkeypatch.setattr(pipeline, "_place_incrementally", spied)


@pytest.mark.parametrize("counts", [True, False], ids=["counted", "host-only"])
@pytest.mark.parametrize("seed", range(6))
def test_random_claims_releases_reloads_and_new_inventories_decide_as_from_scratch(
        seed: int, counts: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    spy = Spy(monkeypatch)
    hosts = [random_host(rng, f"h{i:03}") for i in range(90)]
    claims: list[Claim] = []
    arrays = HostArrays.build(hosts, claims)
    made = len(hosts)
    for step in range(260):
        requests = [random_request(rng, step * 10 + k) for k in range(3)]
        same_decisions(arrays, hosts, claims, requests, counts)
        roll = rng.random()
        if roll < 0.55:  # a placement, counted as the store counts it
            decision = place(arrays, requests[0], counts=counts)
            if decision.placed:
                claim = decision.claim()
                if requests[0].group is not None:
                    claim = replace(claim, group=requests[0].group.name)
                arrays.add_claim(claim)
                claims.append(claim)
        elif roll < 0.7 and claims:  # a release
            claim = claims.pop(rng.randrange(len(claims)))
            arrays.remove_claim(claim)
        elif roll < 0.78:  # usage the caller adds by index (Placer._count_claim)
            i = rng.randrange(len(hosts))
            claim = Claim(f"x{step}", hosts[i].name, rng.choice((1, 2)), 2048, 0)
            arrays.add_usage(i, claim.resources())
            claims.append(claim)
        elif roll < 0.88:  # another server claimed: the host is reloaded, attributes as they were
            i = rng.randrange(len(hosts))
            claims.append(Claim(f"o{step}", hosts[i].name, 2, 4096, 10240))
            arrays.reload_host(i, hosts[i], [c for c in claims if c.host == hosts[i].name])
        elif roll < 0.96:  # an operator changed a host: state, labels, ratios or size
            i = rng.randrange(len(hosts))
            old = hosts[i]
            new = rng.choice((
                replace(old, state="up" if old.state != "up" else "maintenance"),
                replace(old, labels={"zone": "b" if old.labels.get("zone") == "a" else "a"}),
                replace(old, ratios=Ratios(cpu=rng.choice((1.0, 2.0, 4.0)))),
                replace(old, cpus=rng.choice((12, 24, 48))),
            ))
            mine = [c for c in claims if c.host == old.name]
            if all(c.cpus <= new.capacity().cpus for c in mine) and sum(
                    c.cpus for c in mine) <= new.capacity().cpus:
                hosts[i] = new
                arrays.reload_host(i, new, mine)
        else:  # hosts added and removed: the store builds the arrays again
            gone = rng.sample(range(len(hosts)), 3)
            names = {hosts[i].name for i in gone}
            hosts = [h for i, h in enumerate(hosts) if i not in gone]
            hosts += [random_host(rng, f"h{made + k:03}") for k in range(4)]
            made += 4
            claims = [c for c in claims if c.host not in names]
            arrays = HostArrays.build(hosts, claims)
    # The incremental path decided most requests (not only the easy first ones).
    assert spy.taken > 2 * spy.declined, (spy.taken, spy.declined)


def test_ties_among_identical_hosts_are_broken_as_from_scratch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 60 identical hosts: spread fills them round by round, and in each round the hosts left
    # at the lowest use tie. More ties than the walk takes and the path declines; fewer, and it
    # must break them as place does from scratch.
    spy = Spy(monkeypatch)
    hosts = [HostCapacity(f"t{i:02}", cpus=8, memory_mib=16384, disk_mib=0) for i in range(60)]
    arrays = HostArrays.build(hosts, [])
    claims: list[Claim] = []
    for n in range(240):
        request = PlacementRequest(f"v{n}", cpus=1, memory_mib=1024)
        kept = place(arrays, request)
        scratch = place(HostArrays.build(hosts, claims), request, incremental=False)
        assert kept == scratch
        arrays.add_claim(kept.claim())
        claims.append(kept.claim())
    assert spy.taken > 40 and spy.declined > 40, (spy.taken, spy.declined)
