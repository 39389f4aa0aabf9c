"""The pool's hosts as a struct of arrays: one NumPy row per resource, one column per host.

Built once from host rows and VM claims, then kept current claim by claim (``add_claim``,
``remove_claim``) or host by host (``reload_host``), so that a placement costs a handful of
vectorised operations over the pool instead of a Python loop over host objects.

Never does I/O and never decides anything: filters and weighers read these arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from virtpool.control.scheduler.ranking import ShapeRanking
from virtpool.control.scheduler.tallies import CapacityTallies
from virtpool.model.errors import InvalidRequest
from virtpool.model.resources import HOST_STATES, Claim, HostCapacity, Resources

# Row of each resource in the (3, n) arrays; the order of RESOURCE_NAMES.
CPU, MEMORY, DISK = 0, 1, 2
N_RESOURCES = 3

# State codes, in the order of HOST_STATES ("up" is 0 so that "up" is `state == 0`).
STATE_CODES: dict[str, int] = {name: code for code, name in enumerate(HOST_STATES)}
UP = STATE_CODES["up"]

# Accelerators as capability levels: a host at a level runs guests needing that level or less
# (a KVM host runs TCG guests, a TCG host cannot run a KVM-only guest).
ACCEL_LEVELS: dict[str, int] = {"tcg": 0, "kvm": 1}

# Request shapes (pin, accelerator, project, labels, size) whose static filtering is kept.
STATIC_RUNS_KEPT = 512


def _inverse(capacity: np.ndarray) -> np.ndarray:
    """1 / capacity, and 0 where a host has none of a resource (so it counts as 0 % used)."""
    inv = np.zeros(capacity.shape, dtype=np.float64)
    np.divide(1.0, capacity, out=inv, where=capacity > 0)
    return inv


class HostArrays:
    """Capacity, allocation and attributes of every host, column ``i`` being ``names[i]``.

    Attributes (n = number of hosts):

    - ``capacity``, ``allocated``, ``free``: int64 (3, n), rows CPU/MEMORY/DISK, in vCPUs and
      MiB; capacity is under the host's ratios, ``free = capacity - allocated``.
    - ``utilization``: float64 (3, n), ``allocated / capacity`` (0 where capacity is 0),
      computed when read.
    - ``free_fraction_sum``: float64 (n,), Σ over resources of ``free / capacity``; what the
      ``spread`` and ``pack`` weighers rank by, kept here so a request needs one dot product.
    - ``inv_capacity``: float64 (3, n), ``1 / capacity`` (0 where capacity is 0).
    - ``hardware``: int64 (2, n), the CPUs and MiB physically there for guests (total minus
      the reservation, no ratio): what a single VM may be at most.
    - ``state``, ``accel``: int8 (n,) codes (``STATE_CODES``, ``ACCEL_LEVELS``).
    - ``group_counts``: group name → int32 (n,), members of the group on each host.

    Label and project masks are built on first use per (key, value) or project and cached;
    ``reload_host`` keeps the caches current.
    """

    def __init__(self, hosts: Sequence[HostCapacity]) -> None:
        n = len(hosts)
        self.hosts: list[HostCapacity] = list(hosts)
        self.names: list[str] = [h.name for h in hosts]
        self.index: dict[str, int] = {}
        for i, name in enumerate(self.names):
            if name in self.index:
                raise InvalidRequest(f"host '{name}' appears twice in the inventory")
            self.index[name] = i
        self.capacity = np.zeros((N_RESOURCES, n), dtype=np.int64)
        for i, host in enumerate(hosts):
            self.capacity[:, i] = host.capacity().as_tuple()
        self.hardware = np.zeros((2, n), dtype=np.int64)
        for i, host in enumerate(hosts):
            self.hardware[:, i] = host.usable().as_tuple()[:2]
        self.allocated = np.zeros((N_RESOURCES, n), dtype=np.int64)
        self.free = self.capacity.copy()
        self.inv_capacity = _inverse(self.capacity)
        self.free_fraction_sum = (self.free * self.inv_capacity).sum(axis=0)
        self.state = np.array([STATE_CODES[h.state] for h in hosts], dtype=np.int8)
        self.accel = np.array([ACCEL_LEVELS[h.accel] for h in hosts], dtype=np.int8)
        self.group_counts: dict[str, np.ndarray] = {}
        self.claims_per_host = np.zeros(n, dtype=np.int64)
        # Caches of masks that depend only on host attributes, never on usage.
        self._up: np.ndarray | None = None
        self._accel_masks: dict[int, np.ndarray] = {}
        self._label_masks: dict[tuple[str, str], np.ndarray] = {}
        # Each host's value of a label key (None where it has none), as an object array: one
        # pass over the hosts per key, then one comparison per value asked for.
        self._label_values: dict[str, np.ndarray] = {}
        self._project_masks: dict[str | None, np.ndarray] = {}
        self.restricts_projects = any(h.allowed_projects is not None for h in hosts)
        # Outcome of the leading static filters per request shape (pipeline._static_run).
        self.static_runs: dict[tuple, tuple[int, np.ndarray, tuple[int, ...], np.ndarray]] = {}
        self._size_masks: dict[int, np.ndarray] = {}
        # What incremental decisions keep (incremental.py): built on first use, then told of
        # every change of a host's free room; dropped when a host's attributes change.
        self._ranking: ShapeRanking | None = None
        self._tallies: CapacityTallies | None = None

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def build(cls, hosts: Sequence[HostCapacity], claims: Iterable[Claim]) -> HostArrays:
        """Arrays for ``hosts`` with every claim in ``claims`` already counted.

        Raises InvalidRequest for a claim on a host that is not in ``hosts``.
        """
        arrays = cls(hosts)
        n = len(hosts)
        host_idx: list[int] = []
        amounts: list[tuple[int, int, int]] = []
        members: dict[str, list[int]] = {}
        for claim in claims:
            i = arrays._host_of(claim)
            host_idx.append(i)
            amounts.append((claim.cpus, claim.memory_mib, claim.disk_mib))
            if claim.group is not None:
                members.setdefault(claim.group, []).append(i)
        if host_idx:
            idx = np.asarray(host_idx, dtype=np.int64)
            amount = np.asarray(amounts, dtype=np.int64).T  # (3, claims)
            for r in range(N_RESOURCES):
                # bincount sums per host in one pass; np.add.at would do the same, slower.
                arrays.allocated[r] = np.bincount(idx, weights=amount[r], minlength=n).astype(
                    np.int64)
            arrays.claims_per_host = np.bincount(idx, minlength=n).astype(np.int64)
        for group, where in members.items():
            arrays.group_counts[group] = np.bincount(
                np.asarray(where, dtype=np.int64), minlength=n).astype(np.int32)
        arrays._recompute_usage()
        return arrays

    def _recompute_usage(self) -> None:
        self._drop_incremental()
        np.subtract(self.capacity, self.allocated, out=self.free)
        self.free_fraction_sum = (self.free * self.inv_capacity).sum(axis=0)

    def _drop_incremental(self) -> None:
        self._ranking = self._tallies = None

    def _host_of(self, claim: Claim) -> int:
        try:
            return self.index[claim.host]
        except KeyError:
            raise InvalidRequest(
                f"claim of VM '{claim.vm}' names host '{claim.host}', which is not in the "
                "inventory") from None

    # -- incremental updates ---------------------------------------------------------------

    def add_claim(self, claim: Claim) -> int:
        """Count a new claim (a VM just placed); return its host's index."""
        i = self._host_of(claim)
        self._adjust(i, claim, +1)
        return i

    def add_usage(self, i: int, amount: Resources) -> None:
        """Count ``amount`` more in use on host ``i`` as one claim outside any group: what a
        caller that already knows the host's index adds, without building a ``Claim``."""
        # Through Python ints (item, then store): NumPy's scalar arithmetic costs more than the
        # sums themselves, and this runs on every claim.
        allocated = self.allocated
        allocated[CPU, i] = allocated.item(CPU, i) + amount.cpus
        allocated[MEMORY, i] = allocated.item(MEMORY, i) + amount.memory_mib
        allocated[DISK, i] = allocated.item(DISK, i) + amount.disk_mib
        self.claims_per_host[i] = self.claims_per_host.item(i) + 1
        self._refresh_column(i)

    def remove_claim(self, claim: Claim) -> int:
        """Forget a claim (a VM deleted or moved away); return its host's index."""
        i = self._host_of(claim)
        self._adjust(i, claim, -1)
        return i

    def _adjust(self, i: int, claim: Claim, sign: int) -> None:
        amounts = (claim.cpus, claim.memory_mib, claim.disk_mib)
        for r, amount in enumerate(amounts):
            self.allocated[r, i] += sign * amount
        self.claims_per_host[i] += sign
        if claim.group is not None:
            counts = self.group_counts.get(claim.group)
            if counts is None:
                counts = self.group_counts[claim.group] = np.zeros(len(self.names), np.int32)
            counts[i] += sign
        self._refresh_column(i)

    def _refresh_column(self, i: int) -> None:
        # Recomputed from the integers rather than nudged by deltas, so that two hosts with the
        # same figures always score exactly alike (ties are then broken by the seed, not by
        # floating-point dust). Element by element: a column of three costs less so than
        # through slices, and this runs on every claim.
        cap, alloc, inv, free = self.capacity, self.allocated, self.inv_capacity, self.free
        a0, a1, a2 = alloc.item(CPU, i), alloc.item(MEMORY, i), alloc.item(DISK, i)
        v0, v1, v2 = inv.item(CPU, i), inv.item(MEMORY, i), inv.item(DISK, i)
        tallies = self._tallies
        if tallies is not None:
            old = (free.item(CPU, i), free.item(MEMORY, i), free.item(DISK, i))
        room = (cap.item(CPU, i) - a0, cap.item(MEMORY, i) - a1, cap.item(DISK, i) - a2)
        free[CPU, i], free[MEMORY, i], free[DISK, i] = room
        # The order of NumPy's sum over the three rows (_recompute_usage): the same bits.
        total = room[0] * v0 + room[1] * v1 + room[2] * v2
        self.free_fraction_sum[i] = total
        if self._ranking is not None:
            self._ranking.moved(i, room, total)
        if tallies is not None:
            tallies.moved(i, old, room)

    def reload_host(self, i: int, host: HostCapacity, claims: Iterable[Claim]) -> None:
        """Replace column ``i`` with fresh figures: the host row and every claim on it.

        What the store calls after a claim on this host lost a race, before placing again.
        A host whose attributes are unchanged keeps every cache: only its usage moved.
        """
        if host.name != self.names[i] and host.name in self.index:
            raise InvalidRequest(f"host '{host.name}' appears twice in the inventory")
        attributes_changed = host != self.hosts[i]
        if attributes_changed:
            # Before the column changes: these caches assume every host's capacity and
            # attributes as they were built.
            self._drop_incremental()
            self.static_runs.clear()
        del self.index[self.names[i]]
        self.names[i] = host.name
        self.index[host.name] = i
        self.hosts[i] = host
        cap = host.capacity().as_tuple()
        alloc = [0, 0, 0]
        groups: dict[str, int] = {}
        count = 0
        for claim in claims:
            if claim.host != host.name:
                raise InvalidRequest(f"claim of VM '{claim.vm}' is on host '{claim.host}', "
                                     f"not '{host.name}'")
            alloc[0] += claim.cpus
            alloc[1] += claim.memory_mib
            alloc[2] += claim.disk_mib
            count += 1
            if claim.group is not None:
                groups[claim.group] = groups.get(claim.group, 0) + 1
        self.hardware[:, i] = host.usable().as_tuple()[:2]
        for r in range(N_RESOURCES):
            self.capacity[r, i] = cap[r]
            self.inv_capacity[r, i] = 1.0 / cap[r] if cap[r] > 0 else 0.0
            self.allocated[r, i] = alloc[r]
        self.claims_per_host[i] = count
        for name, counts in self.group_counts.items():
            counts[i] = groups.pop(name, 0)
        for name, number in groups.items():
            counts = self.group_counts[name] = np.zeros(len(self.names), np.int32)
            counts[i] = number
        self.state[i] = STATE_CODES[host.state]
        self.accel[i] = ACCEL_LEVELS[host.accel]
        self._refresh_column(i)
        if not attributes_changed:
            return
        # Attribute masks: patch the one column in every cached mask; the static filters'
        # combined outcomes are simply computed again.
        for cpus, mask in self._size_masks.items():
            mask[i] = self.hardware[0, i] >= cpus
        if self._up is not None:
            self._up[i] = self.state[i] == UP
        for level, mask in self._accel_masks.items():
            mask[i] = self.accel[i] >= level
        for key, values in self._label_values.items():
            values[i] = host.labels.get(key)
        for (key, value), mask in self._label_masks.items():
            mask[i] = host.labels.get(key) == value
        for project, mask in self._project_masks.items():
            mask[i] = host.allowed_projects is None or (
                project is not None and project in host.allowed_projects)
        if host.allowed_projects is not None:
            self.restricts_projects = True

    @property
    def utilization(self) -> np.ndarray:
        """``allocated / capacity`` per resource and host, float64 (3, n); 0 where capacity is
        0. Computed when read (by the weighers that score every host), rather than kept
        column by column on every claim."""
        return self.allocated * self.inv_capacity

    # -- attribute masks (cached; they do not change with usage) ---------------------------

    def remember_static_run(
            self, key: tuple, outcome: tuple[int, np.ndarray, tuple[int, ...], np.ndarray]
    ) -> tuple[int, np.ndarray, tuple[int, ...], np.ndarray]:
        """Keep the static filters' ``outcome`` for requests of shape ``key`` (bounded: the
        cache starts over when many shapes were seen) and return it."""
        if len(self.static_runs) >= STATIC_RUNS_KEPT:
            self.static_runs.clear()
        self.static_runs[key] = outcome
        return outcome

    def ranking(self) -> ShapeRanking:
        """The hosts that are up, by shape in order of room (built on first use, then kept
        current)."""
        if self._ranking is None:
            # Hosts not up never take a new VM, and are often the emptiest: left out, they
            # cannot crowd the top of their shape.
            self._ranking = ShapeRanking(self.capacity, self.free, self.inv_capacity,
                                         self.free_fraction_sum, self.up_mask(),
                                         [h.allowed_projects for h in self.hosts])
        return self._ranking

    def tallies(self) -> CapacityTallies:
        """The capacity filters' counts per request shape (started on first use, kept current)."""
        if self._tallies is None:
            self._tallies = CapacityTallies(len(self))
        return self._tallies

    def up_mask(self) -> np.ndarray:
        """True where the host takes new VMs (state "up")."""
        if self._up is None:
            self._up = self.state == UP
        return self._up

    def accel_mask(self, level: int) -> np.ndarray:
        """True where the host's accelerator level is at least ``level``."""
        mask = self._accel_masks.get(level)
        if mask is None:
            mask = self._accel_masks[level] = self.accel >= level
        return mask

    def size_mask(self, cpus: int) -> np.ndarray:
        """True where the host has at least ``cpus`` CPUs for guests."""
        mask = self._size_masks.get(cpus)
        if mask is None:
            if len(self._size_masks) >= STATIC_RUNS_KEPT:
                self._size_masks.clear()
            mask = self._size_masks[cpus] = self.hardware[0] >= cpus
        return mask

    def label_mask(self, key: str, value: str) -> np.ndarray:
        """True where the host carries label ``key=value``."""
        mask = self._label_masks.get((key, value))
        if mask is None:
            values = self._label_values.get(key)
            if values is None:
                values = self._label_values[key] = np.empty(len(self.hosts), dtype=object)
                values[:] = [h.labels.get(key) for h in self.hosts]
            mask = self._label_masks[(key, value)] = values == value
        return mask

    def project_mask(self, project: str | None) -> np.ndarray:
        """True where VMs of ``project`` may run (None: hosts open to every project)."""
        mask = self._project_masks.get(project)
        if mask is None:
            if project is None:
                mask = np.fromiter((h.allowed_projects is None for h in self.hosts),
                                   dtype=bool, count=len(self.hosts))
            else:
                # The open hosts, and those of the (usually few) reserved ones that take it.
                mask = self.project_mask(None).copy()
                for i in np.flatnonzero(~mask).tolist():
                    mask[i] = project in self.hosts[i].allowed_projects  # type: ignore[operator]
            self._project_masks[project] = mask
        return mask

    def members(self, group: str) -> np.ndarray | None:
        """Members of ``group`` per host, or None when the group has never had a member."""
        return self.group_counts.get(group)

    # -- read-outs for people (CLI `host list`, explanations) ------------------------------

    def __len__(self) -> int:
        return len(self.names)

    def capacity_of(self, i: int) -> Resources:
        return Resources(*(int(x) for x in self.capacity[:, i]))

    def allocated_of(self, i: int) -> Resources:
        return Resources(*(int(x) for x in self.allocated[:, i]))

    def free_of(self, i: int) -> Resources:
        return Resources(*(int(x) for x in self.free[:, i]))
