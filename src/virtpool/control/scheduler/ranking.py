"""Hosts by shape, each shape's hosts kept in order of room: where the best ``spread`` host is.

Hosts with the same capacity column (a *shape*: same vCPUs, MiB and MiB under their ratios)
share ``1 / capacity``, so for any request the ``spread`` score of one shape's hosts is their
``free_fraction_sum`` minus one and the same cost. Within a shape the score therefore ranks hosts
exactly as ``free_fraction_sum`` does, and the best host of a shape that fits a request is
usually its first. ``ShapeRanking`` keeps that order as claims change one host at a time, so that
a decision (``incremental.py``) walks a few hosts from the top instead of scoring every one.

Plain Python lists, not arrays: a claim moves one host, and a decision reads a few, which lists
do with far less overhead per step. Never decides anything itself, and never does I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

# More shapes open to a project than this and walking them costs more than scoring every
# host: decide from scratch instead.
MAX_SHAPES = 64
# (project, request size) pairs whose costs per shape are kept; beyond this they start over.
COSTS_KEPT = 4096


class ShapeRanking:
    """Per shape, the indices of the ``ranked`` hosts in descending ``free_fraction_sum`` (ties
    in any order) and, alongside, those sums negated; hosts outside ``ranked`` are left out.
    A shape is a capacity column and the projects its hosts are reserved for (``allowed``).

    Built from a ``HostArrays``' figures; ``moved`` must be told of every change of a host's
    free room (its capacity and attributes never change while this lives).
    """

    def __init__(self, capacity: np.ndarray, free: np.ndarray, inv_capacity: np.ndarray,
                 free_fraction_sum: np.ndarray, ranked: np.ndarray,
                 allowed_projects: Sequence[frozenset[str] | None]) -> None:
        # Hosts reserved for projects form shapes of their own, so that a decision can pass
        # over all of them at once for another project (they are often the emptiest).
        members: dict[tuple, list[int]] = {}
        for i in np.flatnonzero(ranked).tolist():
            shape = (*capacity[:, i].tolist(), allowed_projects[i])
            members.setdefault(shape, []).append(i)
        self._shape_of: list[int] = [-1] * capacity.shape[1]  # -1: not ranked
        self.allowed: list[frozenset[str] | None] = []
        # 1 / capacity per shape, taken from a member so its bits are the hosts' own.
        self.inv: list[tuple[float, float, float]] = []
        self.orders: list[list[int]] = []
        # -free_fraction_sum alongside each order: ascending, for bisect.
        self.keys: list[list[float]] = []
        for k, (shape, hosts) in enumerate(members.items()):
            for i in hosts:
                self._shape_of[i] = k
            self.allowed.append(shape[-1])
            self.inv.append(tuple(inv_capacity[:, hosts[0]].tolist()))
            order = np.asarray(hosts)[np.argsort(-free_fraction_sum[hosts], kind="stable")]
            self.orders.append(order.tolist())
            self.keys.append((-free_fraction_sum[order]).tolist())
        self._open: dict[str | None, list[int]] = {}
        self._costs: dict[tuple[str | None, tuple[int, int, int]],
                          list[tuple[int, float]] | None] = {}
        # Each host's free vCPUs, MiB and MiB, as a decision reads them host by host.
        self.free: list[tuple[int, int, int]] = [tuple(col) for col in free.T.tolist()]
        # Each host's sort key now: where bisect finds it in its shape's keys.
        self._key_of: list[float] = (-free_fraction_sum).tolist()

    def open_to(self, project: str | None) -> list[int]:
        """The shapes whose hosts take VMs of ``project`` (as the project filter has it)."""
        shapes = self._open.get(project)
        if shapes is None:
            shapes = self._open[project] = [
                k for k, allowed in enumerate(self.allowed)
                if allowed is None or (project is not None and project in allowed)]
        return shapes

    def costs(self, project: str | None, need: tuple[int, int, int]
              ) -> list[tuple[int, float]] | None:
        """For each shape open to ``project``, the part of the ``spread`` score that ``need``
        (vCPUs, MiB, MiB) costs its hosts; None when more than ``MAX_SHAPES`` are open.
        Kept per (project, need): requests come in few sizes, and shapes never change."""
        key = (project, need)
        if key in self._costs:
            return self._costs[key]
        shapes = self.open_to(project)
        costs = None
        if len(shapes) <= MAX_SHAPES:
            c, m, d = need
            costs = []
            for k in shapes:
                cpu, memory, disk = self.inv[k]
                # The same sum, term by term in the same order, as weighers.cost: the same bits.
                costs.append((k, c * cpu + m * memory + d * disk))
        if len(self._costs) >= COSTS_KEPT:
            self._costs.clear()
        self._costs[key] = costs
        return costs

    def moved(self, i: int, free: tuple[int, int, int], free_fraction: float) -> None:
        """Host ``i`` has ``free`` room now, and ``free_fraction`` as its
        ``free_fraction_sum``: move it in its order."""
        self.free[i] = free
        k = self._shape_of[i]
        if k < 0:
            return
        order, keys = self.orders[k], self.keys[k]
        at = bisect.bisect_left(keys, self._key_of[i])
        while order[at] != i:  # past hosts of the same key
            at += 1
        del order[at], keys[at]
        key = self._key_of[i] = -free_fraction
        to = bisect.bisect_left(keys, key)
        order.insert(to, i)
        keys.insert(to, key)
