"""The ``spread`` choice from a few hosts instead of all of them, exactly.

``pipeline.place`` scores every host of the pool for every request. For ``spread`` that is not
needed: hosts of one shape score in the order of their free fractions (``ranking.py``), so
``choose`` walks the shapes from the one whose top host scores best, and each shape from its top
host down, and stops as soon as no host left could score as well as the best that fits, or tie
with it. Walking more than ``WALK_LIMIT`` hosts (a request few hosts can take) it gives up, and
the caller decides from scratch. Either way the host chosen is the one ``place`` would choose
from scratch, ties broken the same way.
"""

from __future__ import annotations

import numpy as np

from virtpool.control.scheduler.ranking import ShapeRanking

# Hosts examined before giving up: about what scoring every host from scratch costs.
WALK_LIMIT = 48


def choose(ranking: ShapeRanking, reach: np.ndarray, need: tuple[int, int, int],
           project: str | None, seed: int, tolerance: float) -> int | None:
    """The index of the host ``spread`` picks among those in the mask ``reach`` with room for
    ``need`` (vCPUs, MiB, MiB); None when the walk would be too long. ``reach`` must leave out
    the hosts closed to ``project``: their shapes are not walked.

    Ties (scores within ``tolerance`` of the best) go to ``ties[seed % len(ties)]`` in index
    order, as in ``place``.
    """
    costs = ranking.costs(project, need)
    if costs is None:
        return None
    c, m, d = need
    keys, orders, free = ranking.keys, ranking.orders, ranking.free
    tops = [(-keys[k][0] - cost, k, cost) for k, cost in costs if keys[k]]
    tops.sort(reverse=True)
    threshold = -np.inf
    found: list[tuple[int, float]] = []
    walked = 0
    for top, k, cost in tops:
        if top < threshold:
            break  # every later shape's best host scores lower still
        for i, key in zip(orders[k], keys[k]):
            score = -key - cost
            if score < threshold:
                break  # the rest of this shape scores lower still
            walked += 1
            if walked > WALK_LIMIT:
                return None
            room = free[i]
            if room[0] >= c and room[1] >= m and room[2] >= d and reach[i]:
                found.append((i, score))
                if score - tolerance > threshold:
                    threshold = score - tolerance
    if len(found) == 1:  # the usual case
        return found[0][0]
    ties = sorted(i for i, score in found if score >= threshold)
    if not ties:
        return None
    return ties[0] if len(ties) == 1 else ties[seed % len(ties)]
