"""The rebalancer (like vSphere DRS): plans of live migrations, never their execution.

Two modes:

- **balance** (``plan_rebalance``): bring the spread of host utilisation — the most loaded up
  host minus the least loaded, in percentage points — under a threshold with as few moves as
  the greedy finds. Each step takes the most loaded host that has an improving move and moves
  one of its VMs to the host that lowers the spread most (on equal spread, the move that evens
  load out most, i.e. lowers Σ utilisation²). Targets are first sought among the 128 least
  loaded hosts, then — only if none of those will do — among all. A VM moves at most once per
  plan. It stops under the threshold, or when no move improves; trailing moves that did not
  lower the spread are dropped from the plan. Hosts that no VM may use (reserved for another
  project, say) still count in the spread: the plan then says "no improving move".
- **consolidate** (``plan_consolidation``): empty the least used hosts by packing their VMs
  onto the others (the ``pack`` weigher, largest VM first), listing the hosts it frees. A host
  whose VMs do not all fit is left as it was.

Utilisation of a host is its **dominant share of CPU and memory** (the larger of the two, as in
DRF), where a resource's share is: for VMs the agent measured, measured use ÷ the physical
amount left after the reservation; for the others, allocated ÷ capacity under the ratios. With
no measurements it is exactly the allocated share the placement filters see. Disk counts as a
constraint, not as load: moving a VM does not relieve a busy disk array the way it relieves a
CPU, and free disk is checked by the capacity filter on every move.

Every move passes the same filters as a placement (``pipeline.FILTERS``: host state,
accelerator, project, labels, hard groups, capacity under ratios), evaluated on the pool as it
will be after the moves before it — so a plan is valid when applied in order. Soft group rules
are preferences and are not enforced here. VMs on hosts that are not up are left alone:
evacuating those is the drain's job.

Pure: no I/O. Applying a plan goes through ``MigrationApplier``, which the live-migration work
implements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np

from virtpool.control.scheduler.hosts import CPU, DISK, MEMORY, HostArrays
from virtpool.control.scheduler.pipeline import FILTERS, place
from virtpool.model.errors import InvalidRequest
from virtpool.model.resources import (
    Claim,
    Group,
    HostCapacity,
    MeasuredLoad,
    PlacementRequest,
)

# Issue 4: "brings the spread of host utilization under a threshold (default 10 percentage
# points)".
DEFAULT_THRESHOLD_PP = 10.0
# A spread change smaller than this (in utilisation fraction; 1e-9 = 0.0000001 pp) is rounding,
# not an improvement.
_EPS = 1e-9
# How many of the most loaded hosts one step tries as the source before concluding that no move
# improves. The most loaded one almost always has a move; the next few cover hosts whose VMs are
# pinned by constraints, without making a hopeless step cost a scan of the whole pool.
MAX_SOURCES_PER_STEP = 8

# How many of the least loaded hosts a step considers as targets before trying every host: the
# move that lowers the spread most lands on one of the least loaded hosts unless constraints
# forbid it, and 128 columns instead of 1,000s make a step several times cheaper.
TARGETS_PER_STEP = 128

# Rows of the two load resources in this module's (2, n) arrays.
_CPU, _MEM = 0, 1

Mode = Literal["balance", "consolidate"]


class MigrationApplier(Protocol):
    """What applies a plan: live-migrates one VM. Implemented by the live-migration issue."""

    def migrate(self, vm: str, to_host: str) -> None:
        """Move running VM ``vm`` to ``to_host``; return once it runs there, raise if not."""
        ...


@dataclass(frozen=True, slots=True)
class Move:
    """One live migration of a plan."""

    vm: str
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class RebalancePlan:
    """Moves to apply in order, and what they achieve.

    Spreads are in percentage points over the hosts the mode balances (balance: every up
    host; consolidate: up hosts that held VMs and were not freed). ``stopped`` says why the
    planner stopped: "under threshold", "no improving move", "move limit", "done".
    """

    mode: Mode
    moves: tuple[Move, ...]
    spread_before_pp: float
    spread_after_pp: float
    threshold_pp: float
    hosts_freed: tuple[str, ...]
    stopped: str
    utilization_after_pct: Mapping[str, float]

    @property
    def balanced(self) -> bool:
        """True when the spread after the plan is within the threshold."""
        return self.spread_after_pp <= self.threshold_pp + _EPS


class _Pool:
    """Working state of a planner: the scheduler's arrays plus per-VM load and location."""

    def __init__(self, hosts: Sequence[HostCapacity], claims: Sequence[Claim],
                 groups: Mapping[str, Group], constraints: Mapping[str, PlacementRequest],
                 measured: Mapping[str, MeasuredLoad], *, check_groups: bool = True) -> None:
        self.arrays = HostArrays.build(hosts, claims)
        arrays = self.arrays
        n, v = len(hosts), len(claims)
        self.claims = list(claims)
        self._groups, self._constraints = groups, constraints
        # Built on first use: most VMs are never considered for a move.
        self._requests: list[PlacementRequest | None] = [None] * v
        for claim in claims if check_groups else ():
            if claim.group is not None and claim.vm not in constraints \
                    and claim.group not in groups:
                raise InvalidRequest(
                    f"VM '{claim.vm}' is in group '{claim.group}', which was not given",
                    hint="pass every group the claims name (with its policy) in `groups`")
        self.vm_index: dict[str, int] = {}
        for i, claim in enumerate(claims):
            if claim.vm in self.vm_index:
                raise InvalidRequest(f"VM '{claim.vm}' has two claims")
            self.vm_index[claim.vm] = i
        self.vm_host = np.array([arrays.index[c.host] for c in claims], dtype=np.int64)
        self.vm_need = np.array([(c.cpus, c.memory_mib, c.disk_mib) for c in claims],
                                dtype=np.int64).reshape(v, 3).T  # (3, v), rows as in arrays
        # Load of each VM, split into a measured part (physical CPUs, MiB) and an allocated part
        # (vCPUs, MiB under ratios); exactly one of the two is non-zero per VM and resource.
        self.vm_meas = np.zeros((2, v))
        self.vm_alloc = np.zeros((2, v))
        for i, claim in enumerate(claims):
            load = measured.get(claim.vm)
            if load is None:
                self.vm_alloc[:, i] = (claim.cpus, claim.memory_mib)
            else:
                self.vm_meas[:, i] = (load.cpus, load.memory_mib)
        self.inv_usable = np.zeros((2, n))
        for j, host in enumerate(hosts):
            usable = host.usable()
            for row, amount in ((_CPU, usable.cpus), (_MEM, usable.memory_mib)):
                self.inv_usable[row, j] = 1.0 / amount if amount > 0 else 0.0
        self.inv_cap = arrays.inv_capacity[[CPU, MEMORY]]
        self.host_meas = np.zeros((2, n))
        self.host_alloc = np.zeros((2, n))
        for row in (_CPU, _MEM):
            self.host_meas[row] = np.bincount(self.vm_host, weights=self.vm_meas[row], minlength=n)
            self.host_alloc[row] = np.bincount(self.vm_host, weights=self.vm_alloc[row],
                                               minlength=n)
        self.util2 = self.host_meas * self.inv_usable + self.host_alloc * self.inv_cap
        self.util = self.util2.max(axis=0)
        self.eligible = arrays.up_mask() & ((self.inv_cap > 0).any(axis=0))
        self.on_host: list[list[int]] = [[] for _ in range(n)]
        for i, j in enumerate(self.vm_host.tolist()):
            self.on_host[j].append(i)
        self._static: dict[tuple, np.ndarray] = {}
        self._vm_static: list[np.ndarray | None] = [None] * v

    def request(self, vm: int) -> PlacementRequest:
        """The constraints of VM ``vm`` (index into the claims)."""
        request = self._requests[vm]
        if request is None:
            request = self._requests[vm] = _request_for(self.claims[vm], self._groups,
                                                        self._constraints)
        return request

    def static_mask(self, request: PlacementRequest) -> np.ndarray:
        """Hosts that pass every filter that depends only on host attributes (cached)."""
        key = (request.accel, request.project, tuple(sorted(request.required_labels.items())),
               request.host)
        mask = self._static.get(key)
        if mask is None:
            mask = self.eligible.copy()
            for flt in FILTERS:
                if flt.static:
                    part = flt.check(self.arrays, request)
                    if part is not None:
                        mask &= part
            self._static[key] = mask
        return mask

    def vm_static_mask(self, vm: int) -> np.ndarray:
        """``static_mask`` of VM ``vm``'s request, remembered per VM (it never changes)."""
        mask = self._vm_static[vm]
        if mask is None:
            claim = self.claims[vm]
            if claim.vm in self._constraints:
                mask = self.static_mask(self.request(vm))
            else:  # only its project matters: a stand-in request avoids building one per VM
                mask = self.static_mask(PlacementRequest(claim.vm, 1, 1, project=claim.project))
            self._vm_static[vm] = mask
        return mask

    def group_mask(self, vm: int) -> np.ndarray | None:
        """The hard group filter for moving VM ``vm``, counting the other members only."""
        if self.claims[vm].group is None and self.claims[vm].vm not in self._constraints:
            return None  # the common case, without building a request
        request = self.request(vm)
        if request.group is None or not request.group.hard:
            return None
        group_filter = next(flt for flt in FILTERS if flt.name == "group")
        claim = self.claims[vm]
        self.arrays.remove_claim(claim)  # its own membership must not attract or repel it
        try:
            return group_filter.check(self.arrays, request)
        finally:
            self.arrays.add_claim(claim)

    def move(self, vm: int, target: int) -> Move:
        """Carry out a move in the working state and return it."""
        claim = self.claims[vm]
        source = int(self.vm_host[vm])
        moved = replace(claim, host=self.arrays.names[target])
        self.arrays.remove_claim(claim)
        self.arrays.add_claim(moved)
        self.claims[vm] = moved
        self.vm_host[vm] = target
        self.on_host[source].remove(vm)
        self.on_host[target].append(vm)
        for j, sign in ((source, -1.0), (target, 1.0)):
            self.host_meas[:, j] += sign * self.vm_meas[:, vm]
            self.host_alloc[:, j] += sign * self.vm_alloc[:, vm]
            if not self.on_host[j]:  # an empty host is exactly 0, whatever rounding said
                self.host_meas[:, j] = 0.0
                self.host_alloc[:, j] = 0.0
            self.util2[:, j] = (self.host_meas[:, j] * self.inv_usable[:, j]
                                + self.host_alloc[:, j] * self.inv_cap[:, j])
            self.util[j] = self.util2[:, j].max()
        return Move(claim.vm, self.arrays.names[source], self.arrays.names[target])

    def spread(self, among: np.ndarray) -> float:
        """Max − min utilisation over the hosts in ``among`` (a fraction; 0 for < 2 hosts)."""
        values = self.util[among]
        return float(values.max() - values.min()) if values.size >= 2 else 0.0

    def percentages(self, among: np.ndarray) -> dict[str, float]:
        return {self.arrays.names[j]: round(100.0 * float(self.util[j]), 3)
                for j in np.flatnonzero(among)}


def _request_for(claim: Claim, groups: Mapping[str, Group],
                 constraints: Mapping[str, PlacementRequest]) -> PlacementRequest:
    """What constrains a VM that is already placed: its request if given, else its claim."""
    given = constraints.get(claim.vm)
    if given is not None:
        # The claim is what the VM holds; the request only adds its constraints.
        return replace(given, cpus=max(claim.cpus, 1), memory_mib=max(claim.memory_mib, 1),
                       disk_mib=claim.disk_mib)
    group = None
    if claim.group is not None:
        group = groups.get(claim.group)
        if group is None:
            raise InvalidRequest(
                f"VM '{claim.vm}' is in group '{claim.group}', which was not given",
                hint="pass every group the claims name (with its policy) in `groups`")
    # A request needs at least 1 vCPU and 1 MiB; a claim of 0 (test rigs) asks for that much.
    return PlacementRequest(vm=claim.vm, cpus=max(claim.cpus, 1),
                            memory_mib=max(claim.memory_mib, 1),
                            disk_mib=claim.disk_mib, project=claim.project, group=group)


def utilization(hosts: Sequence[HostCapacity], claims: Sequence[Claim],
                measured: Mapping[str, MeasuredLoad] | None = None) -> dict[str, float]:
    """Utilisation of every host in percent, as the rebalancer sees it (see module doc)."""
    # Groups do not matter to utilisation: do not demand their policies.
    pool = _Pool(hosts, claims, {}, {}, measured or {}, check_groups=False)
    return pool.percentages(np.ones(len(hosts), dtype=bool))


def _others_extreme(util: np.ndarray, among: np.ndarray, source: int,
                    largest: bool) -> np.ndarray:
    """Per target t: the max (or min) utilisation over ``among`` without ``source`` and t.

    Needs only the three most extreme hosts: without the source at most one of them is t.
    """
    idx = np.flatnonzero(among)
    values = util[idx]
    k = min(3, idx.size)
    if largest:
        part = np.argpartition(-values, k - 1)[:k] if idx.size > k else np.arange(idx.size)
        order = part[np.argsort(-values[part], kind="stable")]
        fill = -np.inf
    else:
        part = np.argpartition(values, k - 1)[:k] if idx.size > k else np.arange(idx.size)
        order = part[np.argsort(values[part], kind="stable")]
        fill = np.inf
    top = [(int(idx[o]), float(values[o])) for o in order if int(idx[o]) != source]
    top += [(-1, fill)] * (2 - len(top))
    (first_host, first), (_, second) = top[0], top[1]
    result = np.full(util.shape, first)
    if first_host >= 0:
        result[first_host] = second
    return result


def _best_move(pool: _Pool, source: int, spread: float, moved: np.ndarray,
               targets: np.ndarray) -> tuple[int, int, float] | None:
    """The best move off ``source`` to one of ``targets``: (vm, target, new spread), or None
    if none improves."""
    vms = [v for v in pool.on_host[source] if not moved[v]]
    if not vms:
        return None
    arrays = pool.arrays
    vm_idx = np.asarray(vms, dtype=np.int64)
    # Feasibility of each (VM, target): static filters, hard groups, capacity, not the source.
    rows = []
    gathered: dict[int, np.ndarray] = {}  # most VMs share one static mask: gather it once
    for v in vms:
        mask = pool.vm_static_mask(v)
        row = gathered.get(id(mask))
        if row is None:
            row = gathered[id(mask)] = mask[targets]
        group = pool.group_mask(v)
        if group is not None:
            row = row & group[targets]
        rows.append(row)
    ok = np.stack(rows)
    need = pool.vm_need[:, vm_idx]  # (3, k)
    free = arrays.free[:, targets]  # (3, T)
    for r in (CPU, MEMORY, DISK):
        ok &= free[r][None, :] >= need[r][:, None]
    ok &= (targets != source)[None, :]
    if not ok.any():
        return None
    meas, alloc = pool.vm_meas[:, vm_idx], pool.vm_alloc[:, vm_idx]  # (2, k)
    # Utilisation of the source without each VM, and of every target with it.
    src2 = pool.util2[:, source][:, None] - (meas * pool.inv_usable[:, source][:, None]
                                             + alloc * pool.inv_cap[:, source][:, None])
    new_src = src2.max(axis=0)  # (k,)
    util2, inv_usable, inv_cap = (pool.util2[:, targets], pool.inv_usable[:, targets],
                                  pool.inv_cap[:, targets])
    new_tgt = np.maximum(
        util2[_CPU][None, :] + meas[_CPU][:, None] * inv_usable[_CPU][None, :]
        + alloc[_CPU][:, None] * inv_cap[_CPU][None, :],
        util2[_MEM][None, :] + meas[_MEM][:, None] * inv_usable[_MEM][None, :]
        + alloc[_MEM][:, None] * inv_cap[_MEM][None, :],
    )  # (k, T)
    others_max = _others_extreme(pool.util, pool.eligible, source, largest=True)[targets]
    others_min = _others_extreme(pool.util, pool.eligible, source, largest=False)[targets]
    new_max = np.maximum(np.maximum(others_max[None, :], new_src[:, None]), new_tgt)
    new_min = np.minimum(np.minimum(others_min[None, :], new_src[:, None]), new_tgt)
    new_spread = np.where(ok, new_max - new_min, np.inf)
    u = pool.util
    evening = (new_src**2 - u[source] ** 2)[:, None] + new_tgt**2 - (u[targets] ** 2)[None, :]
    best = float(new_spread.min())
    if best < spread - _EPS:
        # Strictly lower spread: among the best, the move that evens load out most.
        pick = np.where(new_spread <= best + _EPS, evening, np.inf)
    else:
        # A plateau (several hosts share the maximum): a move that keeps the spread but evens
        # load out still brings the next strict improvement closer.
        pick = np.where((new_spread <= spread + _EPS) & (evening < -_EPS), evening, np.inf)
    flat = int(np.argmin(pick))
    row, column = divmod(flat, pick.shape[1])
    if not np.isfinite(pick[row, column]):
        return None
    return vms[row], int(targets[column]), float(new_spread[row, column])


def _most_loaded(pool: _Pool, among: np.ndarray, count: int) -> list[int]:
    """The ``count`` most loaded hosts in ``among``, most loaded first."""
    idx = np.flatnonzero(among)
    if idx.size > count:
        idx = idx[np.argpartition(-pool.util[idx], count - 1)[:count]]
    return idx[np.argsort(-pool.util[idx], kind="stable")].tolist()


def _least_loaded(pool: _Pool, count: int) -> np.ndarray:
    """Indices of the ``count`` least loaded up hosts (all of them if there are fewer)."""
    idx = np.flatnonzero(pool.eligible)
    if idx.size <= count:
        return idx
    return idx[np.argpartition(pool.util[idx], count - 1)[:count]]


def plan_rebalance(hosts: Sequence[HostCapacity], claims: Sequence[Claim], *,
                   groups: Mapping[str, Group] | None = None,
                   constraints: Mapping[str, PlacementRequest] | None = None,
                   measured: Mapping[str, MeasuredLoad] | None = None,
                   threshold_pp: float = DEFAULT_THRESHOLD_PP,
                   max_moves: int | None = None) -> RebalancePlan:
    """Plan the fewest moves the greedy finds that bring the utilisation spread under
    ``threshold_pp`` percentage points, breaking no constraint.

    ``groups`` gives the policy of every group the claims name; ``constraints`` the placement
    request of VMs that have more (labels, accelerator); ``measured`` the agent's figures per VM
    where it reports them. ``max_moves`` caps the plan (default: no cap beyond one move per VM).
    """
    if threshold_pp < 0:
        raise InvalidRequest(f"threshold {threshold_pp} pp is negative")
    pool = _Pool(hosts, claims, groups or {}, constraints or {}, measured or {})
    limit = len(claims) if max_moves is None else max_moves
    among = pool.eligible
    threshold = threshold_pp / 100.0
    spread = before = pool.spread(among)
    moves: list[Move] = []
    moved = np.zeros(len(claims), dtype=bool)
    best_spread, best_len = spread, 0  # the plan is cut back to its last real improvement
    stopped = "under threshold"
    while spread > threshold + _EPS:
        if len(moves) >= limit:
            stopped = "move limit"
            break
        found = None
        order = _most_loaded(pool, among, MAX_SOURCES_PER_STEP)
        # First look among the least loaded hosts only (where load should go, and far cheaper
        # than the whole pool); then, for VMs whose constraints rule those out, everywhere.
        for targets in (_least_loaded(pool, TARGETS_PER_STEP), np.flatnonzero(among)):
            for source in order:
                found = _best_move(pool, source, spread, moved, targets)
                if found is not None:
                    break
            if found is not None or targets.size == np.count_nonzero(among):
                break
        if found is None:
            stopped = "no improving move"
            break
        vm, target, _ = found
        moves.append(pool.move(vm, target))
        moved[vm] = True
        spread = pool.spread(among)  # exact, rather than the estimate the step worked with
        if spread < best_spread - _EPS:
            best_spread, best_len = spread, len(moves)
    if spread > threshold + _EPS and best_len < len(moves):
        # Trailing moves that evened load out but never lowered the spread are not worth a
        # migration each: undo them (in reverse, so each undo is valid).
        for move in reversed(moves[best_len:]):
            vm = pool.vm_index[move.vm]
            pool.move(vm, pool.arrays.index[move.source])
        moves = moves[:best_len]
        spread = pool.spread(among)
    return RebalancePlan("balance", tuple(moves), round(100 * before, 3), round(100 * spread, 3),
                         threshold_pp, (), stopped, pool.percentages(among))


def plan_consolidation(hosts: Sequence[HostCapacity], claims: Sequence[Claim], *,
                       groups: Mapping[str, Group] | None = None,
                       constraints: Mapping[str, PlacementRequest] | None = None,
                       measured: Mapping[str, MeasuredLoad] | None = None,
                       max_hosts: int | None = None,
                       threshold_pp: float = DEFAULT_THRESHOLD_PP) -> RebalancePlan:
    """Plan moves that empty the least used up hosts, packing their VMs onto the others.

    Hosts are tried least used first; a host is freed only if every one of its VMs finds room
    (largest VM first, ``pack`` weigher, all placement filters). Hosts that were already empty
    stay empty, freed hosts take nothing, and a host that received VMs is not emptied later (so
    no VM moves twice). ``max_hosts`` caps how many hosts are freed. ``threshold_pp`` is only
    reported back (the plan's ``balanced`` compares the remaining hosts' spread with it).
    """
    pool = _Pool(hosts, claims, groups or {}, constraints or {}, measured or {})
    arrays = pool.arrays
    in_use = pool.eligible & (arrays.claims_per_host > 0)
    before = pool.spread(in_use)
    closed = set(np.flatnonzero(~in_use).tolist())  # never a target: empty, or not up
    kept: set[int] = set()  # received VMs: not emptied later
    freed: list[int] = []
    moves: list[Move] = []
    order = np.flatnonzero(in_use)
    order = order[np.argsort(pool.util[order], kind="stable")]
    stopped = "done"
    for source in order.tolist():
        if max_hosts is not None and len(freed) >= max_hosts:
            stopped = "host limit"
            break
        if source in kept:
            continue
        vms = sorted(pool.on_host[source],
                     key=lambda v: (-float(arrays.inv_capacity[CPU, source]
                                           * pool.claims[v].cpus
                                           + arrays.inv_capacity[MEMORY, source]
                                           * pool.claims[v].memory_mib), pool.claims[v].vm))
        exclude = sorted(closed | {source})
        done: list[tuple[int, int]] = []  # (vm, its source) for rollback
        for v in vms:
            claim = pool.claims[v]
            arrays.remove_claim(claim)  # so a hard-affinity VM can follow its moved mates
            try:
                decision = place(arrays, pool.request(v), weigher="pack", exclude=exclude)
            finally:
                arrays.add_claim(claim)
            if decision.host_index is None:
                break
            pool.move(v, decision.host_index)
            done.append((v, source))
        else:
            freed.append(source)
            closed.add(source)
            kept.update(int(pool.vm_host[v]) for v, _ in done)
            moves.extend(Move(pool.claims[v].vm, arrays.names[s], pool.claims[v].host)
                         for v, s in done)
            continue
        for v, s in reversed(done):  # this host cannot be emptied: put its VMs back
            pool.move(v, s)
    remaining = in_use.copy()
    remaining[freed] = False
    return RebalancePlan("consolidate", tuple(moves), round(100 * before, 3),
                         round(100 * pool.spread(remaining), 3), threshold_pp,
                         tuple(arrays.names[j] for j in freed), stopped,
                         pool.percentages(remaining))
