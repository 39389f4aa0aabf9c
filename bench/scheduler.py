#!/usr/bin/env python3
"""Scheduler benchmark: placement decisions, packing quality and rebalancing (issue 4).

Three measurements, each with its baseline in the same run where one exists:

* **placement** — 10,000 hosts holding 100,000 VMs (seeded), then 10,000 placement requests
  (plain, with required labels, KVM-only, hard and soft anti-affinity groups, projects). Each
  request goes through ``place`` and the arrays are updated with the new claim
  (``HostArrays.add_claim``), as the control plane will do. Reported: placements per second
  (decision + update) and the p99 latency of the decision alone. Baseline: a straightforward
  pure-Python first-fit over host objects applying the same hard constraints, on the same pool
  and requests.
* **packing** — VM sizes drawn (seeded) from 1, 2, 4, 8, 16 vCPUs × 1, 2, 4, 8 GiB per vCPU,
  small sizes most frequent, placed one by one on identical empty hosts with the ``pack``
  weigher. Reported: hosts used ÷ the lower bound (max over resources of total demand ÷ host
  capacity, rounded up); first-fit in arrival order as the baseline.
* **rebalancing** — 1,000 hosts skewed on purpose (a tenth hot, a tenth cold, the rest around
  the middle): time to plan, spread before and after, moves; and a consolidation plan of the
  same pool (time, hosts freed).

* **end to end** — the same pool as rows in a fresh database (the store's schema), on SQLite
  (WAL) and on a throwaway PostgreSQL server, and the first ``E2E_REQUESTS`` of the same
  requests, each in its own transaction through the control plane's ``Placer``: decision on
  its cached arrays, conditional UPDATE of the host's counters and generation, commit (as
  ``virtpool up`` does per VM create, minus the VM row, the disk and the ORM Session that the
  create's other rows need: ``Placer.claim`` runs on a Core connection). Group members are not
  rows here, so group rules never bite. Baseline: the bare claim — the very same conditional
  UPDATE (``placement.CLAIM``: same hosts, amounts and generations, the counters put back as
  they were first) and commit on a plain connection, without placing — i.e. what the database
  alone costs. The requests run in ``E2E_ROUNDS`` rounds, each followed by its own bare
  claims, so that a burst of noise on the machine falls on both sides rather than on one.
  ``e2e_vs_claim`` is the worse backend's ratio of the two rates over all rounds (issue 13:
  ≥ 0.5); each round's ratio is printed beside it.

Usage: ``bench/scheduler.py [--seed N]``. A table goes to stdout; the last line of stdout is
one JSON object: ``{"name": "scheduler", "placements_per_s": …, "p99_ms": …, …}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Engine

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/postgres.py: the throwaway PostgreSQL server

from tests.postgres import postgres_server  # noqa: E402
from virtpool.control.placement import CLAIM, Placer  # noqa: E402
from virtpool.control.scheduler import (  # noqa: E402
    HostArrays,
    place,
    plan_consolidation,
    plan_rebalance,
)
from virtpool.control.scheduler.hosts import CPU, DISK, MEMORY  # noqa: E402
from virtpool.control.store import db  # noqa: E402
from virtpool.control.store.tables import HostRow  # noqa: E402
from virtpool.model.errors import InsufficientResources  # noqa: E402
from virtpool.model.resources import Claim, Group, HostCapacity, PlacementRequest  # noqa: E402

# -- workload (issue 4, "Benchmarks") ------------------------------------------------------

N_HOSTS = 10_000
N_VMS = 100_000
N_REQUESTS = 10_000
PACK_VMS = 10_000  # enough that the lower bound is ~200 hosts and rounding does not matter
SCORED_SAMPLE = 300  # requests timed for the pure-Python scored baseline (~10 ms each)
REBALANCE_HOSTS = 1_000
E2E_REQUESTS = 5_000  # each one a committed transaction
# Rounds of end-to-end placements, each followed by its bare claims (see _e2e_round).
E2E_ROUNDS = 20

# VM shapes: 1, 2, 4, 8, 16 vCPUs × 1, 2, 4, 8 GiB per vCPU, small sizes most frequent
# (weights roughly halve per step, as in public cloud instance-mix studies).
VCPU_CHOICES = np.array([1, 2, 4, 8, 16])
VCPU_WEIGHTS = np.array([0.35, 0.27, 0.2, 0.12, 0.06])
GIB_PER_VCPU = np.array([1, 2, 4, 8])
GIB_WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])
DISK_GIB_CHOICES = np.array([10, 20, 40, 80])
DISK_WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])

# Targets (issue 4).
TARGET_PLACEMENTS_PER_S = 5_000
TARGET_P99_MS = 5.0
TARGET_PACK_RATIO = 1.05
TARGET_REBALANCE_S = 1.0

GIB = 1024


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def vm_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) int64: vCPUs, memory MiB, disk MiB."""
    cpus = rng.choice(VCPU_CHOICES, size=n, p=VCPU_WEIGHTS)
    memory = cpus * rng.choice(GIB_PER_VCPU, size=n, p=GIB_WEIGHTS) * GIB
    disk = rng.choice(DISK_GIB_CHOICES, size=n, p=DISK_WEIGHTS) * GIB
    return np.stack([cpus, memory, disk], axis=1).astype(np.int64)


# -- the pool for the placement benchmark ----------------------------------------------------

def make_hosts(rng: np.random.Generator, n: int) -> list[HostCapacity]:
    cores = rng.choice([32, 48, 64, 96], size=n)
    gib_per_core = rng.choice([4, 8], size=n)
    disk_tib = rng.choice([4, 8], size=n)
    state_roll = rng.random(n)
    accel_roll = rng.random(n)
    project_roll = rng.random(n)
    zones = rng.choice(["a", "b", "c", "d"], size=n)
    hosts = []
    for i in range(n):
        state = ("down" if state_roll[i] < 0.005 else "maintenance" if state_roll[i] < 0.01
                 else "draining" if state_roll[i] < 0.02 else "up")
        hosts.append(HostCapacity(
            f"host{i:05}", cpus=int(cores[i]), memory_mib=int(cores[i] * gib_per_core[i] * GIB),
            disk_mib=int(disk_tib[i]) * 1024 * GIB, reserved_cpus=2, reserved_memory_mib=4 * GIB,
            labels={"zone": str(zones[i]), "disk": "ssd" if i % 2 else "hdd"},
            state=state, accel="tcg" if accel_roll[i] < 0.05 else "kvm",
            allowed_projects=(frozenset({f"p{i % 10}"}) if project_roll[i] < 0.03 else None)))
    return hosts


def make_claims(rng: np.random.Generator, hosts: list[HostCapacity], n: int) -> list[Claim]:
    """n VMs spread at random over the up hosts, never beyond a host's capacity."""
    arrays = HostArrays(hosts)
    capacity = arrays.capacity.T.copy()
    open_hosts = np.flatnonzero(np.array([h.state == "up" and h.allowed_projects is None
                                          for h in hosts]))
    sizes = vm_sizes(rng, n)
    where = rng.choice(open_hosts, size=n)
    used = np.zeros_like(capacity)
    np.add.at(used, where, sizes)
    # Move VMs off any host that came out over capacity (rare at this fill), one by one.
    for h in np.flatnonzero((used > capacity).any(axis=1)):
        for v in np.flatnonzero(where == h)[::-1]:
            if (used[h] <= capacity[h]).all():
                break
            while True:
                other = int(rng.choice(open_hosts))
                if (used[other] + sizes[v] <= capacity[other]).all():
                    break
            used[h] -= sizes[v]
            used[other] += sizes[v]
            where[v] = other
    groups = rng.random(n) < 0.10  # a tenth of the VMs are in one of 2,000 groups
    group_ids = rng.integers(0, 2_000, size=n)
    claims = []
    for v in range(n):
        host = hosts[int(where[v])].name
        group = f"g{group_ids[v]}" if groups[v] else None
        claims.append(Claim(f"vm{v:06}", host, int(sizes[v, 0]), int(sizes[v, 1]),
                            int(sizes[v, 2]), project="default", group=group))
    return claims


def make_requests(rng: np.random.Generator, n: int) -> list[PlacementRequest]:
    sizes = vm_sizes(rng, n)
    kind = rng.random(n)
    zones = rng.choice(["a", "b", "c", "d"], size=n)
    group_ids = rng.integers(0, 2_000, size=n)
    requests = []
    for i in range(n):
        extra: dict = {}
        k = kind[i]
        if k < 0.10:
            extra["required_labels"] = {"zone": str(zones[i])}
        elif k < 0.15:
            extra["required_labels"] = {"zone": str(zones[i]), "disk": "ssd"}
        elif k < 0.20:
            extra["accel"] = "kvm"
        elif k < 0.30:
            extra["group"] = Group(f"g{group_ids[i]}", "anti-affinity")
        elif k < 0.35:
            extra["group"] = Group(f"g{group_ids[i]}", "anti-affinity", hard=False)
        project = f"p{i % 10}" if 0.35 <= k < 0.38 else "default"
        requests.append(PlacementRequest(f"new{i:05}", int(sizes[i, 0]), int(sizes[i, 1]),
                                         int(sizes[i, 2]), project=project, **extra))
    return requests


# -- baseline: first-fit over host objects -----------------------------------------------------

@dataclass
class PyHost:
    """What a simple scheduler keeps per host: plain attributes, no arrays."""

    name: str
    free_cpus: int
    free_memory: int
    free_disk: int
    up: bool
    kvm: bool
    labels: dict
    allowed_projects: frozenset | None
    groups: dict = field(default_factory=dict)


def py_hosts(hosts: list[HostCapacity], claims: list[Claim]) -> list[PyHost]:
    objs = []
    for h in hosts:
        cap = h.capacity()
        objs.append(PyHost(h.name, cap.cpus, cap.memory_mib, cap.disk_mib, h.state == "up",
                           h.accel == "kvm", dict(h.labels), h.allowed_projects))
    by_name = {o.name: o for o in objs}
    for c in claims:
        o = by_name[c.host]
        o.free_cpus -= c.cpus
        o.free_memory -= c.memory_mib
        o.free_disk -= c.disk_mib
        if c.group:
            o.groups[c.group] = o.groups.get(c.group, 0) + 1
    return objs


def first_fit(hosts: list[PyHost], r: PlacementRequest) -> PyHost | None:
    """The first host, in inventory order, that passes every hard constraint."""
    for h in hosts:
        if not h.up:
            continue
        if r.accel == "kvm" and not h.kvm:
            continue
        if h.allowed_projects is not None and r.project not in h.allowed_projects:
            continue
        if any(h.labels.get(k) != v for k, v in r.required_labels.items()):
            continue
        if r.group is not None and r.group.hard and h.groups.get(r.group.name, 0):
            continue  # the benchmark's hard groups are all anti-affinity
        if h.free_cpus >= r.cpus and h.free_memory >= r.memory_mib and h.free_disk >= r.disk_mib:
            return h
    return None


def spread_py(hosts: list[PyHost], r: PlacementRequest,
              capacity: dict[str, tuple[int, int, int]]) -> PyHost | None:
    """The same ranking as ``spread`` — most free after placement — in plain Python."""
    best, best_score = None, -math.inf
    for h in hosts:
        if not h.up or (r.accel == "kvm" and not h.kvm):
            continue
        if h.allowed_projects is not None and r.project not in h.allowed_projects:
            continue
        if any(h.labels.get(k) != v for k, v in r.required_labels.items()):
            continue
        if r.group is not None and r.group.hard and h.groups.get(r.group.name, 0):
            continue
        if h.free_cpus < r.cpus or h.free_memory < r.memory_mib or h.free_disk < r.disk_mib:
            continue
        cap = capacity[h.name]
        score = ((h.free_cpus - r.cpus) / cap[0] + (h.free_memory - r.memory_mib) / cap[1]
                 + (h.free_disk - r.disk_mib) / cap[2])
        if score > best_score:
            best, best_score = h, score
    return best


def take(h: PyHost, r: PlacementRequest) -> None:
    h.free_cpus -= r.cpus
    h.free_memory -= r.memory_mib
    h.free_disk -= r.disk_mib
    if r.group is not None:
        h.groups[r.group.name] = h.groups.get(r.group.name, 0) + 1


# -- the three measurements ----------------------------------------------------------------------

def bench_placement(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    began = time.perf_counter()
    hosts = make_hosts(rng, N_HOSTS)
    claims = make_claims(rng, hosts, N_VMS)
    requests = make_requests(rng, N_REQUESTS)
    arrays = HostArrays.build(hosts, claims)
    note(f"placement pool built in {time.perf_counter() - began:.1f}s")

    latencies = np.empty(len(requests))
    refused = 0
    gc.collect()
    start = time.perf_counter()
    for i, request in enumerate(requests):
        t0 = time.perf_counter()
        decision = place(arrays, request)
        latencies[i] = time.perf_counter() - t0
        if decision.host is None:
            refused += 1
        else:
            arrays.add_claim(decision.claim())
    elapsed = time.perf_counter() - start
    assert (arrays.free >= 0).all(), "a host was promised more than it has"

    objs = py_hosts(hosts, claims)
    base_latencies = np.empty(len(requests))
    base_refused = 0
    gc.collect()
    start = time.perf_counter()
    for i, request in enumerate(requests):
        t0 = time.perf_counter()
        chosen = first_fit(objs, request)
        base_latencies[i] = time.perf_counter() - t0
        if chosen is None:
            base_refused += 1
        else:
            take(chosen, request)
    base_elapsed = time.perf_counter() - start

    # Second reference: the same global ranking as `spread`, written as a Python loop over host
    # objects. Too slow for all 10,000 requests; timed on the first SCORED_SAMPLE.
    objs = py_hosts(hosts, claims)
    capacity = {h.name: h.capacity().as_tuple() for h in hosts}
    start = time.perf_counter()
    for request in requests[:SCORED_SAMPLE]:
        chosen = spread_py(objs, request, capacity)
        if chosen is not None:
            take(chosen, request)
    scored_elapsed = time.perf_counter() - start
    return {
        "scored_python_placements_per_s": SCORED_SAMPLE / scored_elapsed,
        "placements_per_s": len(requests) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "max_ms": float(latencies.max() * 1e3),
        "refused": refused,
        "baseline_placements_per_s": len(requests) / base_elapsed,
        "baseline_p50_ms": float(np.percentile(base_latencies, 50) * 1e3),
        "baseline_p99_ms": float(np.percentile(base_latencies, 99) * 1e3),
        "baseline_refused": base_refused,
    }


def bench_e2e(seed: int, url: str) -> dict:
    """Placement with the database claim, on the database at ``url`` (see the module doc)."""
    rng = np.random.default_rng(seed)  # the same pool and requests as bench_placement
    hosts = make_hosts(rng, N_HOSTS)
    claims = make_claims(rng, hosts, N_VMS)
    requests = make_requests(rng, N_REQUESTS)[:E2E_REQUESTS]
    used = HostArrays.build(hosts, claims).allocated
    # The 100,000 claims were only needed for the counters: a server holds no such objects,
    # and keeping them would make every full garbage collection in the timed loops walk them.
    del claims
    engine = db.make_engine(db.normalize_url(url))
    db.migrate(engine)
    sessions = db.session_factory(engine)
    with sessions.begin() as session:
        session.execute(insert(HostRow), [{
            "name": h.name, "cpus": h.cpus, "memory_mib": h.memory_mib,
            "disk_mib": h.disk_mib, "reserved_cpus": h.reserved_cpus,
            "reserved_memory_mib": h.reserved_memory_mib,
            "reserved_disk_mib": h.reserved_disk_mib, "cpu_ratio": h.ratios.cpu,
            "memory_ratio": h.ratios.memory, "disk_ratio": h.ratios.disk,
            "balloon": h.balloon, "labels": dict(h.labels), "state": h.state,
            "accel": h.accel, "allowed_projects": (sorted(h.allowed_projects)
                                                   if h.allowed_projects else None),
            "used_cpus": int(used[CPU, i]), "used_memory_mib": int(used[MEMORY, i]),
            "used_disk_mib": int(used[DISK, i])} for i, h in enumerate(hosts)])
    del hosts
    placer = Placer()
    with sessions.begin() as session:  # the first full read of 10,000 rows, not timed
        placer.claim(session, PlacementRequest("warm-up", 1, 1))
    e2e_s = claim_s = 0.0
    latencies: list[float] = []
    base_latencies: list[float] = []
    ratios: list[float] = []
    refused = 0
    size = -(-len(requests) // E2E_ROUNDS)
    for start in range(0, len(requests), size):
        rounds = _e2e_round(engine, placer, requests[start:start + size])
        e2e_s += rounds["e2e_s"]
        claim_s += rounds["claim_s"]
        latencies += rounds["latencies"]
        base_latencies += rounds["base_latencies"]
        refused += rounds["refused"]
        ratios.append((len(rounds["latencies"]) / rounds["e2e_s"])
                      / (len(rounds["base_latencies"]) / rounds["claim_s"]))
    engine.dispose()
    e2e = np.array(latencies)
    base = np.array(base_latencies)
    return {
        "e2e_placements_per_s": len(e2e) / e2e_s,
        "e2e_p50_ms": float(np.percentile(e2e, 50) * 1e3),
        "e2e_p99_ms": float(np.percentile(e2e, 99) * 1e3),
        "e2e_refused": refused,
        "claim_only_per_s": len(base) / claim_s,
        "claim_only_p50_ms": float(np.percentile(base, 50) * 1e3),
        "claim_only_p99_ms": float(np.percentile(base, 99) * 1e3),
        "round_ratios": ratios,
    }


_COUNTERS = (HostRow.name, HostRow.used_cpus, HostRow.used_memory_mib, HostRow.used_disk_mib,
             HostRow.generation)


def _e2e_round(engine: Engine, placer: Placer, requests: list[PlacementRequest]) -> dict:
    """One round: ``requests`` end to end, then the same claims as bare UPDATEs.

    The bare claims start from the counters and generations the end-to-end claims started
    from (the counters after, less what the round claimed), and add the same amounts, so they
    leave every row exactly as the end-to-end round left it: the placer's cache stays exact for
    the next round. Rounds alternate so that both sides share the machine's moments of noise.
    """
    latencies: list[float] = []
    placed: list[PlacementRequest] = []
    chosen: list[str] = []
    refused = 0
    gc.collect()
    start = time.perf_counter()
    for request in requests:
        t0 = time.perf_counter()
        try:
            with engine.begin() as connection:
                chosen.append(placer.claim(connection, request).host or "")
            placed.append(request)
        except InsufficientResources:
            refused += 1
        latencies.append(time.perf_counter() - t0)
    e2e_s = time.perf_counter() - start

    def counters() -> dict[str, tuple[int, int, int, int]]:
        with engine.connect() as connection:
            return {row.name: tuple(row[1:]) for row in connection.execute(
                select(*_COUNTERS).where(HostRow.name.in_(set(chosen))))}

    after = counters()
    before = {host: list(values) for host, values in after.items()}
    for host, request in zip(chosen, placed, strict=True):
        for k, amount in enumerate((request.cpus, request.memory_mib, request.disk_mib, 1)):
            before[host][k] -= amount
    # Baseline: the same claims as bare UPDATEs, from the same counters and generations.
    with engine.begin() as connection:
        connection.execute(
            update(HostRow).where(HostRow.name == bindparam("host")).values(
                used_cpus=bindparam("c"), used_memory_mib=bindparam("m"),
                used_disk_mib=bindparam("d"), generation=bindparam("g")),
            [{"host": h, "c": c, "m": m, "d": d, "g": g} for h, (c, m, d, g) in before.items()])
    generation = {h: values[3] for h, values in before.items()}
    params = []
    for host, request in zip(chosen, placed, strict=True):
        params.append({"host": host, "seen": generation[host], "d_cpus": request.cpus,
                       "d_memory": request.memory_mib, "d_disk": request.disk_mib,
                       "g_cpus": request.cpus, "g_memory": request.memory_mib,
                       "g_disk": request.disk_mib})
        generation[host] += 1
    base_latencies: list[float] = []
    gc.collect()
    start = time.perf_counter()
    for values in params:
        t0 = time.perf_counter()
        with engine.begin() as connection:
            if connection.execute(CLAIM, values).rowcount != 1:
                raise RuntimeError(f"the bare claim on {values['host']} matched no row")
        base_latencies.append(time.perf_counter() - t0)
    claim_s = time.perf_counter() - start
    if counters() != after:
        raise RuntimeError("the bare claims did not leave the hosts as the placements did")
    return {"e2e_s": e2e_s, "claim_s": claim_s, "latencies": latencies,
            "base_latencies": base_latencies, "refused": refused}


def bench_e2e_backends(seed: int) -> dict[str, dict]:
    """End to end on SQLite and on PostgreSQL, each with its baseline."""
    with tempfile.TemporaryDirectory(prefix="virtpool-bench-") as tmp:
        results = {"sqlite": bench_e2e(seed, db.sqlite_url(Path(tmp) / "state.db"))}
    with postgres_server() as url:
        results["postgresql"] = bench_e2e(seed, url)
    for e in results.values():
        e["e2e_vs_claim"] = e["e2e_placements_per_s"] / e["claim_only_per_s"]
    return results


# Host shapes for packing. Memory-bound: a common 2-socket box with 8 GiB per core, where the
# VM mix (2.6 GiB per vCPU on average) fills memory first. Balanced: 10 GiB per core, where the
# mix needs about as much of both, so both must be packed tightly — the harder case.
PACK_HOST = {"cpus": 64, "memory_mib": 512 * GIB, "disk_mib": 8 * 1024 * GIB}
PACK_SHAPES = {"memory-bound 64c/512G": PACK_HOST,
               "balanced 64c/640G": {"cpus": 64, "memory_mib": 640 * GIB,
                                     "disk_mib": 8 * 1024 * GIB}}


def bench_packing(seed: int, shape: dict) -> dict:
    rng = np.random.default_rng(seed + 1)
    sizes = vm_sizes(rng, PACK_VMS)
    template = HostCapacity("t", **shape)
    cap = np.array(template.capacity().as_tuple())
    lower_bound = int(max(math.ceil(sizes[:, r].sum() / cap[r]) for r in range(3)))
    n_hosts = int(lower_bound * 1.5) + 10
    hosts = [HostCapacity(f"p{i:04}", **shape) for i in range(n_hosts)]
    requests = [PlacementRequest(f"v{i:05}", *map(int, sizes[i])) for i in range(PACK_VMS)]

    arrays = HostArrays.build(hosts, [])
    start = time.perf_counter()
    refused = 0
    for r in requests:
        decision = place(arrays, r, weigher="pack")
        if decision.host is None:
            refused += 1
        else:
            arrays.add_claim(decision.claim())
    pack_s = time.perf_counter() - start
    used = int(np.count_nonzero(arrays.claims_per_host))

    objs = py_hosts(hosts, [])
    for r in requests:
        chosen = first_fit(objs, r)
        if chosen is not None:
            take(chosen, r)
    ff_used = sum(1 for o in objs if o.free_memory < cap[MEMORY] or o.free_cpus < cap[CPU])
    dominant = max(range(3), key=lambda r: sizes[:, r].sum() / cap[r])
    return {
        "lower_bound_hosts": lower_bound,
        "dominant_resource": ("cpu", "memory", "disk")[dominant],
        "pack_hosts": used,
        "pack_refused": refused,
        "pack_hosts_vs_lower_bound": used / lower_bound,
        "first_fit_hosts": ff_used,
        "first_fit_hosts_vs_lower_bound": ff_used / lower_bound,
        "pack_s": pack_s,
        "fill_pct": {name: round(100 * float(arrays.allocated[r].sum()) / (used * cap[r]), 1)
                     for r, name in ((CPU, "cpu"), (MEMORY, "memory"), (DISK, "disk"))},
    }


def skewed_pool(seed: int) -> tuple[list[HostCapacity], list[Claim]]:
    """1,000 hosts filled to a target dominant share: 10 % hot (80-90 %), 10 % cold (5-15 %),
    the rest 40-60 %."""
    rng = np.random.default_rng(seed + 2)
    hosts = [HostCapacity(f"r{i:04}", **PACK_HOST) for i in range(REBALANCE_HOSTS)]
    cap = np.array(hosts[0].capacity().as_tuple(), dtype=np.float64)
    roll = rng.random(REBALANCE_HOSTS)
    targets = np.where(roll < 0.1, rng.uniform(0.80, 0.90, REBALANCE_HOSTS),
                       np.where(roll < 0.2, rng.uniform(0.05, 0.15, REBALANCE_HOSTS),
                                rng.uniform(0.40, 0.60, REBALANCE_HOSTS)))
    claims: list[Claim] = []
    pool = vm_sizes(rng, 200_000)
    k = 0
    for i, h in enumerate(hosts):
        used = np.zeros(3)
        while True:
            size = pool[k]
            k += 1
            after = used + size
            if (after[:2] / cap[:2]).max() > targets[i]:
                if (used[:2] / cap[:2]).max() > targets[i] - 0.05:
                    break
                continue  # too big for what is left: try a smaller one
            used = after
            claims.append(Claim(f"vm{len(claims):06}", h.name, *map(int, size)))
    return hosts, claims


def bench_rebalance(seed: int) -> dict:
    hosts, claims = skewed_pool(seed)
    gc.collect()
    start = time.perf_counter()
    plan = plan_rebalance(hosts, claims)
    rebalance_s = time.perf_counter() - start
    start = time.perf_counter()
    consolidation = plan_consolidation(hosts, claims)
    consolidate_s = time.perf_counter() - start
    return {
        "rebalance_vms": len(claims),
        "rebalance_s": rebalance_s,
        "spread_before_pp": plan.spread_before_pp,
        "spread_after_pp": plan.spread_after_pp,
        "rebalance_moves": len(plan.moves),
        "rebalance_stopped": plan.stopped,
        "consolidate_s": consolidate_s,
        "consolidate_hosts_freed": len(consolidation.hosts_freed),
        "consolidate_moves": len(consolidation.moves),
    }


def table(rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    lines = []
    for j, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    began = time.perf_counter()
    p = bench_placement(args.seed)
    note(f"placement done at {time.perf_counter() - began:.1f}s")
    packs = {label: bench_packing(args.seed, shape) for label, shape in PACK_SHAPES.items()}
    # The headline is the worse of the shapes, so that a friendly shape cannot flatter it.
    k = max(packs.values(), key=lambda x: x["pack_hosts_vs_lower_bound"])
    note(f"packing done at {time.perf_counter() - began:.1f}s")
    r = bench_rebalance(args.seed)
    note(f"rebalancing done at {time.perf_counter() - began:.1f}s")
    ends = bench_e2e_backends(args.seed)
    # The headline is the worse backend's.
    e = min(ends.values(), key=lambda x: x["e2e_vs_claim"])
    note(f"end to end done at {time.perf_counter() - began:.1f}s")

    def ok(good: bool) -> str:
        return "ok" if good else "MISSED"

    rows = [
        ("measure", "virtpool", "baseline", "target"),
        ("placements/s (10k hosts, 100k VMs)", f"{p['placements_per_s']:,.0f}",
         f"{p['baseline_placements_per_s']:,.0f} (first-fit)",
         f"≥ {TARGET_PLACEMENTS_PER_S:,} {ok(p['placements_per_s'] >= TARGET_PLACEMENTS_PER_S)}"),
        ("decision p50 / p99 ms", f"{p['p50_ms']:.3f} / {p['p99_ms']:.3f}",
         f"{p['baseline_p50_ms']:.3f} / {p['baseline_p99_ms']:.3f}",
         f"p99 ≤ {TARGET_P99_MS} {ok(p['p99_ms'] <= TARGET_P99_MS)}"),
        ("requests refused", str(p["refused"]), str(p["baseline_refused"]), ""),
    ]
    for backend, x in ends.items():
        rows += [
            (f"e2e placements/s, {backend} claim ({E2E_REQUESTS:,} req.)",
             f"{x['e2e_placements_per_s']:,.0f}",
             f"{x['claim_only_per_s']:,.0f} (bare claim UPDATE + commit)",
             f"ratio {x['e2e_vs_claim']:.2f} (target ≥ 0.5) {ok(x['e2e_vs_claim'] >= 0.5)}"),
            (f"e2e p50 / p99 ms, {backend}", f"{x['e2e_p50_ms']:.3f} / {x['e2e_p99_ms']:.3f}",
             f"{x['claim_only_p50_ms']:.3f} / {x['claim_only_p99_ms']:.3f}", ""),
            (f"e2e ratio per round, {backend}",
             " ".join(f"{r:.2f}" for r in x["round_ratios"]), "", ""),
        ]
    rows += [
        ("placements/s, same ranking as spread", f"{p['placements_per_s']:,.0f}",
         f"{p['scored_python_placements_per_s']:,.0f} (Python loop, {SCORED_SAMPLE} req.)", ""),
    ]
    for label, x in packs.items():
        rows += [
            (f"pack {label}: hosts / lower bound",
             (f"{x['pack_hosts']} / {x['lower_bound_hosts']} = "
              f"{x['pack_hosts_vs_lower_bound']:.3f}"),
             (f"{x['first_fit_hosts']} / {x['lower_bound_hosts']} = "
              f"{x['first_fit_hosts_vs_lower_bound']:.3f} (first-fit)"),
             f"≤ {TARGET_PACK_RATIO} {ok(x['pack_hosts_vs_lower_bound'] <= TARGET_PACK_RATIO)}"),
            (f"pack {label}: fill cpu/mem/disk % (bound: {x['dominant_resource']})",
             "/".join(str(v) for v in x["fill_pct"].values()), "", ""),
        ]
    rows += [
        (f"rebalance plan s ({REBALANCE_HOSTS} hosts, {r['rebalance_vms']} VMs)",
         f"{r['rebalance_s']:.3f}", "",
         f"≤ {TARGET_REBALANCE_S} {ok(r['rebalance_s'] <= TARGET_REBALANCE_S)}"),
        ("rebalance spread before → after pp",
         f"{r['spread_before_pp']:.2f} → {r['spread_after_pp']:.2f}", "",
         f"≤ 10 {ok(r['spread_after_pp'] <= 10.0)}"),
        ("rebalance moves", f"{r['rebalance_moves']} ({r['rebalance_stopped']})", "", ""),
        ("consolidate plan s / hosts freed / moves",
         (f"{r['consolidate_s']:.2f} / {r['consolidate_hosts_freed']} / "
          f"{r['consolidate_moves']}"), "", ""),
    ]
    print(table(rows))
    print(f"wall time {time.perf_counter() - began:.1f}s")
    summary = {
        "name": "scheduler",
        "placements_per_s": round(p["placements_per_s"], 1),
        "p99_ms": round(p["p99_ms"], 4),
        "baseline_placements_per_s": round(p["baseline_placements_per_s"], 1),
        "baseline_p99_ms": round(p["baseline_p99_ms"], 4),
        "scored_python_placements_per_s": round(p["scored_python_placements_per_s"], 1),
        "pack_hosts_vs_lower_bound": round(k["pack_hosts_vs_lower_bound"], 4),
        "first_fit_hosts_vs_lower_bound": round(k["first_fit_hosts_vs_lower_bound"], 4),
        "pack_by_shape": {label: round(x["pack_hosts_vs_lower_bound"], 4)
                          for label, x in packs.items()},
        "rebalance_s": round(r["rebalance_s"], 4),
        "rebalance_spread_before_pp": r["spread_before_pp"],
        "rebalance_spread_after_pp": r["spread_after_pp"],
        "rebalance_moves": r["rebalance_moves"],
        "consolidate_s": round(r["consolidate_s"], 3),
        "consolidate_hosts_freed": r["consolidate_hosts_freed"],
        "e2e_placements_per_s": round(e["e2e_placements_per_s"], 1),
        "e2e_p50_ms": round(e["e2e_p50_ms"], 4),
        "e2e_p99_ms": round(e["e2e_p99_ms"], 4),
        "claim_only_per_s": round(e["claim_only_per_s"], 1),
        # End-to-end placement (decision, claim, commit) against the bare claim, same run and
        # database, the worse backend's: the Python around the claim (issue 13 item 3: >= 0.5).
        "e2e_vs_claim": round(e["e2e_vs_claim"], 3),
        "e2e_by_backend": {backend: {"e2e_per_s": round(x["e2e_placements_per_s"], 1),
                                     "claim_only_per_s": round(x["claim_only_per_s"], 1),
                                     "e2e_p50_ms": round(x["e2e_p50_ms"], 4),
                                     "claim_only_p50_ms": round(x["claim_only_p50_ms"], 4),
                                     "e2e_vs_claim": round(x["e2e_vs_claim"], 3),
                                     "round_ratios": [round(r, 3) for r in x["round_ratios"]]}
                           for backend, x in ends.items()},
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
