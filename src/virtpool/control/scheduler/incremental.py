"""The ``spread`` choice from a few hundred hosts instead of all of them, exactly.

``pipeline.place`` scores every host of the pool for every request. For ``spread`` that is not
needed: hosts of one shape score in the order of their free fractions (``ranking.py``), so the
best host that fits is among the first few of some shape. ``choose`` scores only those heads and
proves, with a bound per shape, that no host beyond them could score as well or tie; when it
cannot prove that, it answers None and the caller decides from scratch. Either way the host
chosen is the one ``place`` would choose from scratch, ties broken the same way.
"""

from __future__ import annotations

import numpy as np

from virtpool.control.scheduler.hosts import CPU, DISK, MEMORY, HostArrays
from virtpool.control.scheduler.ranking import ShapeRanking
from virtpool.control.scheduler.weighers import cost


def choose(arrays: HostArrays, ranking: ShapeRanking, reach: tuple[np.ndarray, ...],
           need: np.ndarray, seed: int, tolerance: float) -> int | None:
    """The index of the host ``spread`` picks among the hosts in every mask of ``reach`` that
    have room for ``need`` (vCPUs, MiB, MiB as float64), or None when the heads cannot show it.

    Ties (scores within ``tolerance`` of the best) go to ``ties[seed % len(ties)]`` in index
    order, as in ``place``.
    """
    idx, shape, rest = ranking.heads()
    spent = cost(need, ranking.inv)  # per shape: the same sum `spread` takes per host
    score = arrays.free_fraction_sum[idx] - spent[shape]
    fits = ((arrays.free[CPU, idx] >= need[0]) & (arrays.free[MEMORY, idx] >= need[1])
            & (arrays.free[DISK, idx] >= need[2]))
    for mask in reach:
        fits &= mask[idx]
    if not fits.any():
        return None  # the best fitting host, if any, is beyond the heads
    threshold = score[fits].max() - tolerance
    if (rest - spent).max() >= threshold:
        return None  # a host beyond the heads might score as well
    ties = np.unique(idx[fits & (score >= threshold)])
    return int(ties[0] if len(ties) == 1 else ties[seed % len(ties)])
