"""Hard constraints of placement, one tiny function each.

A filter takes the pool's arrays and a request and returns a boolean mask over hosts — True
where the host may take the VM — or None when it has nothing to say about this request (no
labels required, no group…), which costs nothing and removes nothing. Filters never combine,
count or rank: the pipeline (``pipeline.py``) runs them in order and counts what each removed.

A filter must not mutate the arrays or return a mask it will later change: cached masks are
returned as they are, and the pipeline only reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from virtpool.control.scheduler.hosts import ACCEL_LEVELS, CPU, DISK, MEMORY, HostArrays
from virtpool.model.resources import PlacementRequest

Check = Callable[[HostArrays, PlacementRequest], "np.ndarray | None"]


# Compared and hashed by identity (eq=False): filters are module constants, and the pipeline
# keys caches by tuples of them on every placement, where hashing each field would cost.
@dataclass(frozen=True, slots=True, eq=False)
class Filter:
    """A named hard constraint.

    ``name`` keys the counters in a ``Decision`` (tests and explanations read them); ``reason``
    is a short phrase for logs and metrics; ``static`` filters depend only on host attributes,
    never on usage, so callers that place many VMs at once (the rebalancer) may cache them.
    """

    name: str
    reason: str
    check: Check
    static: bool


def pinned(arrays: HostArrays, request: PlacementRequest) -> np.ndarray | None:
    """A VM pinned to a host (`vm create --host`) may go there only; every other filter still
    applies to that host, so a refusal says why it cannot take the VM."""
    if request.host is None:
        return None
    mask = np.zeros(len(arrays), dtype=bool)
    index = arrays.index.get(request.host)
    if index is not None:
        mask[index] = True
    return mask


def host_state(arrays: HostArrays, request: PlacementRequest) -> np.ndarray:
    """Only hosts that are up take new VMs; draining, maintenance and down hosts never do."""
    return arrays.up_mask()


def accelerator(arrays: HostArrays, request: PlacementRequest) -> np.ndarray | None:
    """A VM that needs KVM runs only on KVM hosts; TCG runs anywhere."""
    if request.accel is None:
        return None
    level = ACCEL_LEVELS[request.accel]
    if level == 0:
        return None  # every host can emulate
    return arrays.accel_mask(level)


def project(arrays: HostArrays, request: PlacementRequest) -> np.ndarray | None:
    """Hosts reserved for some projects take only those projects' VMs."""
    if not arrays.restricts_projects:
        return None
    return arrays.project_mask(request.project)


def labels(arrays: HostArrays, request: PlacementRequest) -> np.ndarray | None:
    """Every required ``key=value`` label must be on the host."""
    required = request.required_labels
    if not required:
        return None
    masks = [arrays.label_mask(key, value) for key, value in required.items()]
    if len(masks) == 1:
        return masks[0]
    return np.logical_and.reduce(masks)


def group(arrays: HostArrays, request: PlacementRequest) -> np.ndarray | None:
    """Hard group rules: anti-affinity keeps members apart, affinity keeps them together.

    Affinity with no member placed yet lets the first one go anywhere.
    """
    rule = request.group
    if rule is None or not rule.hard:
        return None
    counts = arrays.members(rule.name)
    if counts is None:
        return None  # no member yet: nothing to keep apart from or together with
    if rule.policy == "anti-affinity":
        return counts == 0
    if not counts.any():
        return None
    return counts > 0


def cpu(arrays: HostArrays, request: PlacementRequest) -> np.ndarray:
    """Free vCPUs under the host's CPU ratio cover the request."""
    return arrays.free[CPU] >= request.cpus


def memory(arrays: HostArrays, request: PlacementRequest) -> np.ndarray:
    """Free memory under the host's memory ratio covers the request."""
    return arrays.free[MEMORY] >= request.memory_mib


def size(arrays: HostArrays, request: PlacementRequest) -> np.ndarray:
    """The host has at least as many CPUs as the VM has vCPUs (and as its affinity and cap
    name), whatever the CPU ratio promises: one VM's vCPUs never share a host CPU. (Memory
    needs no such rule: a host's memory capacity is under 1.0 unless its guests balloon.)"""
    return arrays.size_mask(max(request.cpus, request.host_cpus))


def disk(arrays: HostArrays, request: PlacementRequest) -> np.ndarray:
    """Free disk under the host's disk ratio covers the request."""
    return arrays.free[DISK] >= request.disk_mib


PINNED = Filter("pinned", "not the pinned host", pinned, static=True)
HOST_STATE = Filter("state", "host not up", host_state, static=True)
ACCELERATOR = Filter("accel", "accelerator missing", accelerator, static=True)
PROJECT = Filter("project", "host closed to the project", project, static=True)
LABELS = Filter("labels", "required label missing", labels, static=True)
GROUP = Filter("group", "group rule", group, static=False)
SIZE = Filter("size", "too few host CPUs", size, static=True)
CPU_FIT = Filter("cpu", "not enough vCPUs", cpu, static=False)
MEMORY_FIT = Filter("memory", "not enough memory", memory, static=False)
DISK_FIT = Filter("disk", "not enough disk", disk, static=False)

# Name of the pseudo-filter that counts hosts the caller ruled out (``place(exclude=...)``).
EXCLUDED = "excluded"
# The capacity filters, by resource row, for explanations ("largest free …").
CAPACITY_FILTERS: dict[str, int] = {"cpu": CPU, "memory": MEMORY, "disk": DISK}
