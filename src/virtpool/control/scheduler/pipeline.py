"""Placement: filters, then a weigher, then a deterministic tie-break — in one place.

``place`` decides; it does not claim. The caller (the store) claims the chosen host with a
conditional update on the host's generation and, when that claim loses a race, refreshes the
host (``HostArrays.reload_host``) and calls ``place`` again, passing hosts it wants skipped for
this attempt in ``exclude``.

The counters in a ``Decision`` — hosts removed per filter — are the only source of the refusal
sentences (``explain.py``) and are what the tests assert on.

Most ``spread`` placements skip the passes over every host: the counters come from tallies kept
claim by claim (``tallies.py``) and the host from a walk down the hosts ranked by shape
(``ranking.py``, ``incremental.py``). That path decides exactly as the passes would, and hands
over to them whenever it cannot show that it does. A caller that reads only the chosen host
(the control plane's ``Placer``) asks for no counters (``counts=False``), and the path then
skips the tallies too.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from virtpool.control.scheduler import filters as f
from virtpool.control.scheduler.hosts import HostArrays
from virtpool.control.scheduler.incremental import choose
from virtpool.control.scheduler.tallies import CPU_STAGE, DISK_STAGE, LEFT, MEMORY_STAGE
from virtpool.control.scheduler.weighers import WEIGHERS, soft_group
from virtpool.model.errors import InvalidRequest
from virtpool.model.resources import HOST_STATES, Claim, PlacementRequest

# The pipeline, in order. Filters that only look up a cached mask come first, so that the ones
# doing arithmetic per request run on the fewest hosts that matter for the counters — and so
# that a refusal names the most fundamental reason first (a host that is down "lacks memory"
# too, but saying so would mislead).
FILTERS: tuple[f.Filter, ...] = (
    f.PINNED,  # one host or none; skipped unless the VM is pinned (`vm create --host`)
    f.HOST_STATE,  # cached; drain/maintenance/down hosts never take new VMs
    f.ACCELERATOR,  # cached per level; skipped unless the VM insists on KVM
    f.PROJECT,  # cached per project; skipped when no host is reserved for projects
    f.LABELS,  # cached per key=value; skipped when none are required
    f.GROUP,  # one comparison on the group's member counts; skipped without a hard group
    f.SIZE,  # cached per CPU count; a VM with more vCPUs than a host has CPUs never fits it
    f.CPU_FIT,  # capacity last: one comparison each, and their reasons need the others ruled out
    f.MEMORY_FIT,
    f.DISK_FIT,
)
FILTER_NAMES: tuple[str, ...] = (f.EXCLUDED, *(flt.name for flt in FILTERS))
# A resize of a VM on its own host (a ``growth`` request): its size and what it grows by. The
# rest held when it was placed, and a host's state does not evict the VMs it has.
GROWTH_FILTERS: tuple[f.Filter, ...] = (f.PINNED, f.SIZE, f.CPU_FIT, f.MEMORY_FIT, f.DISK_FIT)

DEFAULT_WEIGHER = "spread"

# Scores within this of the best count as a tie. Scores are sums of at most three fractions in
# [0, 1] plus soft group terms, so 1e-9 is far below any real difference (1 MiB of a 1 TiB host
# is ~1e-6) and far above rounding error (~1e-16 per operation).
TIE_TOLERANCE = 1e-9


def request_seed(request: PlacementRequest) -> int:
    """The tie-break seed of a request: a stable hash of its VM name.

    Stable across processes (unlike ``hash()``, which Python salts per run), so that the same
    request on the same figures lands on the same host when replayed.
    """
    digest = hashlib.blake2b(request.vm.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one placement, with the counts that explain it.

    ``removed`` maps every name in ``FILTER_NAMES`` (in that order) to how many hosts that
    stage removed from those still standing. A placement asked for without counts
    (``place(counts=False)``) may leave them out: ``candidates`` is then None and ``removed``
    empty. On a refusal, ``largest_free`` gives, for each
    capacity filter that removed hosts, the most free of that resource among the hosts it
    removed, and ``not_up`` how many of the hosts the state filter removed are in each state.
    """

    request: PlacementRequest
    host_index: int | None
    host: str | None
    weigher: str
    seed: int
    hosts_total: int
    candidates: int | None
    removed: Mapping[str, int]
    largest_free: Mapping[str, int] = field(default_factory=dict)
    not_up: Mapping[str, int] = field(default_factory=dict)

    @property
    def placed(self) -> bool:
        return self.host_index is not None

    def claim(self) -> Claim:
        """The claim to write for this decision; InvalidRequest if nothing was chosen."""
        if self.host is None:
            raise InvalidRequest(f"no host was chosen for VM '{self.request.vm}'")
        return self.request.claim_on(self.host)


def _exclusion_mask(n: int, exclude: Iterable[int]) -> np.ndarray | None:
    if exclude == ():  # the usual case: no array to build
        return None
    idx = np.fromiter(exclude, dtype=np.int64)
    if idx.size == 0:
        return None
    if idx.min() < 0 or idx.max() >= n:
        raise InvalidRequest(f"excluded host index out of range 0..{n - 1}: {idx.tolist()}")
    mask = np.ones(n, dtype=bool)
    mask[idx] = False
    return mask


def feasible(arrays: HostArrays, request: PlacementRequest, exclude: Iterable[int] = (),
             filters: tuple[f.Filter, ...] = FILTERS) -> tuple[np.ndarray, dict[str, int]]:
    """Run every filter: the mask of hosts that pass them all, and hosts removed per stage.

    Counting is sequential, as in Nomad: a host is charged to the first stage that removes it.
    """
    n = len(arrays)
    removed: dict[str, int] = dict.fromkeys(FILTER_NAMES, 0)
    # Masks are combined in place into `alive`, never into a filter's own (possibly cached) mask.
    excluded = _exclusion_mask(n, exclude)
    first = 0
    if excluded is None:
        # The leading static filters' outcome depends only on host attributes and on the
        # request fields they read: computed once per such request and reused.
        first, mask, counts, _ = _static_run(arrays, request, filters)
        alive = mask.copy()
        standing = int(np.count_nonzero(alive)) if first else n
        for flt, count in zip(filters[:first], counts, strict=True):
            removed[flt.name] = count
    else:
        alive = excluded.copy()
        standing = int(np.count_nonzero(alive))
        removed[f.EXCLUDED] = n - standing
    for flt in filters[first:]:
        # Once no host is left, later stages have nothing to remove: skip their work.
        mask = flt.check(arrays, request) if standing else None
        if mask is None:
            removed[flt.name] = 0
            continue
        np.logical_and(alive, mask, out=alive)
        now = int(np.count_nonzero(alive))
        removed[flt.name] = standing - now
        standing = now
    return alive, removed


@functools.cache
def _leading_static(filters: tuple[f.Filter, ...]) -> tuple[str, ...]:
    """The names of the static filters that lead ``filters``."""
    run = 0
    while run < len(filters) and filters[run].static:
        run += 1
    return tuple(flt.name for flt in filters[:run])


# The usual case, looked up once rather than hashed per placement.
_FILTERS_STATIC = _leading_static(FILTERS)


def _static_key(request: PlacementRequest, filters: tuple[f.Filter, ...]) -> tuple:
    """What the leading static filters of ``filters`` read of ``request``: their cache key."""
    leading = _FILTERS_STATIC if filters is FILTERS else _leading_static(filters)
    return (leading, request.host, request.accel, request.project,
            frozenset(request.required_labels.items()), max(request.cpus, request.host_cpus))


def _static_run(arrays: HostArrays, request: PlacementRequest, filters: tuple[f.Filter, ...],
                key: tuple | None = None
                ) -> tuple[int, np.ndarray, tuple[int, ...], np.ndarray]:
    """How many filters lead ``filters`` that are static, the mask of hosts they leave, what
    each removed, and that mask with the size filter applied too (the hosts whose room
    decides): from ``arrays``' cache, keyed by the request fields they read (``_static_key``,
    given as ``key`` when the caller has it already)."""
    if key is None:
        key = _static_key(request, filters)
    run = len(key[0])
    cached = arrays.static_runs.get(key)
    if cached is None:
        n = len(arrays)
        alive = np.ones(n, dtype=bool)
        standing = n
        counts = []
        for flt in filters[:run]:
            mask = flt.check(arrays, request) if standing else None
            if mask is None:
                counts.append(0)
                continue
            np.logical_and(alive, mask, out=alive)
            now = int(np.count_nonzero(alive))
            counts.append(standing - now)
            standing = now
        reach = alive & arrays.size_mask(max(request.cpus, request.host_cpus))
        cached = arrays.remember_static_run(key, (run, alive, tuple(counts), reach))
    return cached


def _diagnose(arrays: HostArrays, request: PlacementRequest, exclude: Iterable[int],
              filters: tuple[f.Filter, ...]) -> tuple[dict[str, int], dict[str, int]]:
    """Details for a refusal: largest free per capacity filter, and states of hosts not up.

    Runs the filters again with bookkeeping the fast path does not pay for; refusals are rare.
    """
    n = len(arrays)
    alive = np.ones(n, dtype=bool)
    excluded = _exclusion_mask(n, exclude)
    if excluded is not None:
        alive &= excluded
    largest: dict[str, int] = {}
    not_up: dict[str, int] = {}
    for flt in filters:
        mask = flt.check(arrays, request)
        if mask is None:
            continue
        dropped = alive & ~mask
        if dropped.any():
            if flt.name in f.CAPACITY_FILTERS:
                row = f.CAPACITY_FILTERS[flt.name]
                largest[flt.name] = max(0, int(arrays.free[row][dropped].max()))
            elif flt is f.SIZE:
                largest["size"] = int(arrays.hardware[0][dropped].max())
            elif flt is f.HOST_STATE:
                codes = np.bincount(arrays.state[dropped], minlength=len(HOST_STATES))
                not_up = {HOST_STATES[c]: int(k) for c, k in enumerate(codes) if k}
        alive &= mask
    return largest, not_up


def place(arrays: HostArrays, request: PlacementRequest, *, weigher: str | None = None,
          exclude: Iterable[int] = (), seed: int | None = None,
          incremental: bool = True, counts: bool = True) -> Decision:
    """Choose a host for ``request``, or none; never changes ``arrays``' figures.

    ``weigher`` is the pool's default ranking (``spread`` when None); the request's own
    ``weigher`` overrides it. ``exclude`` holds indices of hosts to skip this time (e.g. one
    whose claim just lost a race). ``seed`` breaks ties among equally good hosts; by default it
    is derived from the VM name (``request_seed``), so a placement can be replayed. A
    ``growth`` request (a resize) runs ``GROWTH_FILTERS`` only.

    A ``spread`` placement is decided from what ``arrays`` keeps between decisions (the
    capacity tallies and the ranking of hosts by shape) whenever that is exact, which makes
    it independent of the pool's size; ``incremental=False`` scores every host, which decides
    the same, and is what the incremental path is tested against.

    ``counts=False`` is for a caller that needs only the host (the control plane claims it
    and reads nothing else): that path then skips counting what each filter removed, and a
    placed decision may come without its counters. A refusal always has them.
    """
    name = request.weigher or weigher or DEFAULT_WEIGHER
    try:
        rank = WEIGHERS[name]
    except KeyError:
        raise InvalidRequest(f"unknown weigher {name!r}",
                             hint=f"one of: {', '.join(WEIGHERS)}") from None
    if seed is None:
        seed = request_seed(request)
    exclude = tuple(exclude)
    if incremental and name == "spread" and not exclude and _incremental_applies(arrays, request):
        decision = _place_incrementally(arrays, request, seed, counts)
        if decision is not None:
            return decision
    filters = GROWTH_FILTERS if request.growth else FILTERS
    alive, removed = feasible(arrays, request, exclude, filters)
    candidates = len(arrays) - sum(removed.values())
    common = {"request": request, "weigher": name, "seed": seed, "hosts_total": len(arrays),
              "candidates": candidates, "removed": removed}
    if candidates == 0:
        largest, not_up = _diagnose(arrays, request, exclude, filters)
        return Decision(host_index=None, host=None, largest_free=largest, not_up=not_up,
                        **common)
    if candidates == 1:
        chosen = int(np.flatnonzero(alive)[0])
    else:
        need = np.array((request.cpus, request.memory_mib, request.disk_mib), dtype=np.float64)
        score = rank(arrays, need)
        bonus = soft_group(arrays, request)
        if bonus is not None:
            score += bonus
        # Boolean assignment touches only the filtered-out hosts (usually few): cheaper
        # than np.putmask over every host.
        score[~alive] = -np.inf
        best_index = int(np.argmax(score))
        tied = score >= score[best_index] - TIE_TOLERANCE
        if np.count_nonzero(tied) == 1:  # the usual case: skip listing the ties
            chosen = best_index
        else:
            ties = np.flatnonzero(tied)
            chosen = int(ties[seed % len(ties)])
    return Decision(host_index=chosen, host=arrays.names[chosen], **common)


def _incremental_applies(arrays: HostArrays, request: PlacementRequest) -> bool:
    """Whether ``_place_incrementally`` may decide: a new VM, not pinned (one host: scratch is
    cheap), with no group rule that bites yet (members would filter or score hosts)."""
    return (not request.growth and request.host is None and len(arrays) > 0
            and (request.group is None or arrays.members(request.group.name) is None))


def _place_incrementally(arrays: HostArrays, request: PlacementRequest, seed: int,
                         counts: bool = True) -> Decision | None:
    """What ``place`` decides with ``spread`` for a request ``_incremental_applies`` to, from
    the kept tallies and ranking, without a pass over the pool; None when it cannot be sure
    (a refusal, too many shapes of host open to the project, a walk too long). Without
    ``counts``, a placed decision leaves its counters out (see ``place``)."""
    ranking = arrays.ranking()
    key = _static_key(request, FILTERS)
    run, _, static_counts, reach = _static_run(arrays, request, FILTERS, key)
    amounts = (request.cpus, request.memory_mib, request.disk_mib)
    if not counts:
        # choose() returns only a host with room: when none has any (or the walk would be
        # too long) the passes decide, and a refusal is counted there.
        chosen = choose(ranking, reach, amounts, request.project, seed, TIE_TOLERANCE)
        if chosen is None:
            return None
        return Decision(request=request, host_index=chosen, host=arrays.names[chosen],
                        weigher="spread", seed=seed, hosts_total=len(arrays), candidates=None,
                        removed={})
    by_stage = arrays.tallies().counts((key, amounts), reach, amounts, arrays.free)
    candidates = by_stage[LEFT]
    if candidates == 0:
        return None  # a refusal: decided from scratch, with its diagnosis
    chosen = choose(ranking, reach, amounts, request.project, seed, TIE_TOLERANCE)
    if chosen is None:
        return None
    removed: dict[str, int] = dict.fromkeys(FILTER_NAMES, 0)
    for flt, count in zip(FILTERS[:run], static_counts, strict=True):
        removed[flt.name] = count
    standing = len(arrays) - sum(static_counts)
    removed[f.SIZE.name] = standing - sum(by_stage)
    removed[f.CPU_FIT.name] = by_stage[CPU_STAGE]
    removed[f.MEMORY_FIT.name] = by_stage[MEMORY_STAGE]
    removed[f.DISK_FIT.name] = by_stage[DISK_STAGE]
    return Decision(request=request, host_index=chosen, host=arrays.names[chosen],
                    weigher="spread", seed=seed, hosts_total=len(arrays), candidates=candidates,
                    removed=removed)
