"""Ranking of the hosts that passed every filter: higher score is better.

A weigher takes the arrays and the request's needs (vCPUs, MiB, MiB as a float vector) and
returns a score for *every* host, as a new array that the pipeline may overwrite (it masks out
the filtered hosts in place). Scoring all hosts is
cheaper than gathering the survivors first (NumPy's fancy indexing copies), and keeps each
weigher one or two array expressions.

Scores live in small, known ranges (free fractions in [0, 3], utilisations in [0, 1]) so that
the soft group preference can be given a weight that always outranks them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from virtpool.control.scheduler.hosts import HostArrays
from virtpool.model.resources import WEIGHER_NAMES, PlacementRequest

Weigher = Callable[[HostArrays, np.ndarray], np.ndarray]

# A soft group rule outranks load: the widest any weigher's score can differ between two hosts
# is 3 (three resources' free fractions, each in [0, 1]), so a weight above that makes "one
# member fewer" (anti-affinity) or "a member already there" (affinity) win over any load
# difference, while still yielding to hard filters.
SOFT_GROUP_WEIGHT = 4.0


def cost(need: np.ndarray, inv_capacity: np.ndarray) -> np.ndarray:
    """Σ over resources of ``need / capacity``: the share of each host the VM would take.

    Written out term by term rather than as ``need @ inv_capacity``: a matrix product may sum
    in another order (or fuse), and the incremental decision (``incremental.py``) computes the
    same sum for one shape of host at a time, so both must round alike, bit for bit.
    """
    return need[0] * inv_capacity[0] + need[1] * inv_capacity[1] + need[2] * inv_capacity[2]


def spread(arrays: HostArrays, need: np.ndarray) -> np.ndarray:
    """Most room left after placement: Σ over resources of free fraction once the VM is in.

    Spreads VMs evenly, which keeps the noisy-neighbour risk and the blast radius of one host
    small — the usual default for a general pool.
    """
    return arrays.free_fraction_sum - cost(need, arrays.inv_capacity)


def pack(arrays: HostArrays, need: np.ndarray) -> np.ndarray:
    """Least room left after placement (best fit): fills hosts so that others stay empty."""
    return cost(need, arrays.inv_capacity) - arrays.free_fraction_sum


def balanced(arrays: HostArrays, need: np.ndarray) -> np.ndarray:
    """Lowest dominant utilisation after placement: the fullest resource decides.

    Like DRF, it keeps any one resource of a host from running out while others idle: a
    memory-heavy VM goes where memory is least used even if CPU is busier there.
    """
    after = arrays.utilization + need[:, None] * arrays.inv_capacity
    return -after.max(axis=0)


WEIGHERS: dict[str, Weigher] = {"spread": spread, "pack": pack, "balanced": balanced}

if set(WEIGHERS) != set(WEIGHER_NAMES):  # the model's list of names and ours must agree
    raise RuntimeError(f"weighers {sorted(WEIGHERS)} differ from the model's {WEIGHER_NAMES}")


def soft_group(arrays: HostArrays, request: PlacementRequest) -> np.ndarray | None:
    """Score adjustment for a soft group rule, or None when the request has none.

    Anti-affinity: minus the weight per member already on the host (so members spread as evenly
    as the filters allow). Affinity: plus the weight where a member already runs.
    """
    rule = request.group
    if rule is None or rule.hard:
        return None
    counts = arrays.members(rule.name)
    if counts is None:
        return None
    if rule.policy == "anti-affinity":
        return -SOFT_GROUP_WEIGHT * counts
    return SOFT_GROUP_WEIGHT * (counts > 0)
