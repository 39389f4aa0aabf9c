"""Hosts by shape, each shape's hosts kept in order of room: where the best ``spread`` host is.

Hosts with the same capacity column (a *shape*: same vCPUs, MiB and MiB under their ratios)
share ``1 / capacity``, so for any request the ``spread`` score of one shape's hosts is their
``free_fraction_sum`` minus one and the same cost. Within a shape the score therefore ranks hosts
exactly as ``free_fraction_sum`` does, and the best host of a shape that fits a request is among
the first few in that order. ``ShapeRanking`` keeps that order as claims change one host at a
time, and offers the first ``HEADS`` of every shape (the *heads*) with a bound on the rest, so
that a decision looks at a few hundred hosts instead of every one (``incremental.py``).

Never decides anything itself, and never does I/O.
"""

from __future__ import annotations

import numpy as np

# The first hosts of each shape offered to a decision. Enough that a shape's best fitting host
# is almost always among them (a host is passed over only when it lacks room or is filtered out).
HEADS = 24
# More shapes than this and the heads would be most of the pool: decide from scratch instead.
MAX_SHAPES = 64


class ShapeRanking:
    """Per shape, host indices in descending ``free_fraction_sum`` (ties in any order).

    Built from a ``HostArrays``' capacity and free fractions; ``moved`` must be told of every
    change of a host's ``free_fraction_sum`` (its capacity never changes while this lives).
    """

    def __init__(self, capacity: np.ndarray, inv_capacity: np.ndarray,
                 free_fraction_sum: np.ndarray) -> None:
        shapes, first, shape_of = np.unique(capacity.T, axis=0, return_index=True,
                                             return_inverse=True)
        self.shape_of: np.ndarray = shape_of.reshape(-1).astype(np.int64)
        # 1 / capacity per shape, taken from a member so its bits are the hosts' own.
        self.inv: np.ndarray = inv_capacity[:, first].copy()  # (3, shapes)
        order = np.lexsort((-free_fraction_sum, self.shape_of))
        bounds = np.searchsorted(self.shape_of[order], np.arange(len(shapes) + 1))
        self._orders: list[np.ndarray] = [order[a:b] for a, b in zip(bounds, bounds[1:])]
        # The sort keys alongside each order (negated: ascending, for searchsorted).
        self._keys: list[np.ndarray] = [-free_fraction_sum[o] for o in self._orders]
        # Row k: shape k's first HEADS hosts, padded by repeating its last (so a row is never
        # short and the flat view needs no mask; a repeated host only scores twice alike).
        self._heads = np.zeros((len(shapes), HEADS), dtype=np.int64)
        self._head_shape = np.repeat(np.arange(len(shapes)), HEADS)
        self._rest = np.full(len(shapes), -np.inf)
        for k in range(len(shapes)):
            self._refresh_heads(k)

    @property
    def shapes(self) -> int:
        return len(self._orders)

    def moved(self, i: int, free_fraction: float) -> None:
        """Host ``i``'s ``free_fraction_sum`` is now ``free_fraction``: move it in its order."""
        k = int(self.shape_of[i])
        order, keys = self._orders[k], self._keys[k]
        at = int(np.flatnonzero(order == i)[0])
        order = np.delete(order, at)
        keys = np.delete(keys, at)
        to = int(np.searchsorted(keys, -free_fraction))
        self._orders[k] = np.insert(order, to, i)
        self._keys[k] = np.insert(keys, to, -free_fraction)
        self._refresh_heads(k)

    def _refresh_heads(self, k: int) -> None:
        order = self._orders[k]
        first = order[:HEADS]
        self._heads[k, :len(first)] = first
        self._heads[k, len(first):] = order[-1]
        self._rest[k] = -self._keys[k][HEADS] if len(order) > HEADS else -np.inf

    def heads(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first ``HEADS`` hosts of every shape (a host may appear twice), the shape of
        each, and per shape the ``free_fraction_sum`` of its best host not among them (-inf
        when every host is). Read-only views: valid until the next ``moved``."""
        return self._heads.reshape(-1), self._head_shape, self._rest
