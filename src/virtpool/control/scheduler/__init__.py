"""The pool's scheduler: where a VM should run, and which VMs should move.

Pure functions over NumPy arrays of host figures — no database, no HTTP, no I/O. The store
builds ``HostArrays`` from host rows and claims, calls ``place`` and claims the chosen host
atomically (retrying on fresh figures when it loses a race); the rebalancer returns plans that a
``MigrationApplier`` carries out.

    arrays = HostArrays.build(hosts, claims)
    decision = place(arrays, request, weigher="spread")
    if not decision.placed:
        raise refusal(decision)          # InsufficientResources with explain(decision)
    arrays.add_claim(decision.claim())   # once the claim is written
"""

from virtpool.control.scheduler.explain import explain, reasons, refusal
from virtpool.control.scheduler.hosts import HostArrays
from virtpool.control.scheduler.pipeline import (
    DEFAULT_WEIGHER,
    FILTER_NAMES,
    FILTERS,
    Decision,
    feasible,
    place,
    request_seed,
)
from virtpool.control.scheduler.rebalance import (
    DEFAULT_THRESHOLD_PP,
    MigrationApplier,
    Move,
    RebalancePlan,
    plan_consolidation,
    plan_rebalance,
    utilization,
)
from virtpool.control.scheduler.weighers import WEIGHERS

__all__ = [
    "DEFAULT_THRESHOLD_PP",
    "DEFAULT_WEIGHER",
    "FILTERS",
    "FILTER_NAMES",
    "WEIGHERS",
    "Decision",
    "HostArrays",
    "MigrationApplier",
    "Move",
    "RebalancePlan",
    "explain",
    "feasible",
    "place",
    "plan_consolidation",
    "plan_rebalance",
    "reasons",
    "refusal",
    "request_seed",
    "utilization",
]
