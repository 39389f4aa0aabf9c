"""What the capacity filters remove, per request shape, kept exact claim by claim.

A decision's counters ("N of M hosts could take it", "7 hosts lack memory") need, among the
hosts that passed every attribute filter, how many lack vCPUs, then memory, then disk. Counting
that afresh is a few passes over the pool per request. ``CapacityTallies`` counts it once per
*slot* (a request shape: which hosts reach the capacity filters, and the vCPUs and MiB asked)
and then brings the counts up to date from a log of the hosts whose free room changed since: a
claim appends one entry, and a decision replays only the entries its slot has not seen (or
counts afresh when they are more than that would cost).

Never decides anything itself, and never does I/O.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

# The stage a host stops at: removed by the cpu, memory or disk filter, or left standing.
CPU_STAGE, MEMORY_STAGE, DISK_STAGE, LEFT = 0, 1, 2, 3
# Request shapes counted at once (at most, and within a memory budget of one byte per host and
# slot); beyond this the tallies start over, like the static masks.
SLOTS_KEPT = 1024
SLOTS_BUDGET_BYTES = 16 << 20
# Log entries a slot replays at most; behind by more, it counts afresh (about as costly).
REPLAY_LIMIT = 128

Free = tuple[int, int, int]


def count_stages(free: np.ndarray, reach: np.ndarray, need: Free) -> list[int]:
    """Hosts in the mask ``reach`` per stage for ``need``, given ``free`` (3, n): afresh."""
    standing = [int(np.count_nonzero(reach))]
    alive = reach
    for row, amount in enumerate(need):
        alive = alive & (free[row] >= amount)
        standing.append(int(np.count_nonzero(alive)))
    return [standing[0] - standing[1], standing[1] - standing[2], standing[2] - standing[3],
            standing[3]]


@dataclass(slots=True)
class _Slot:
    reach: np.ndarray
    need: Free
    counts: list[int]
    seen: int  # changes counted: log entries up to this (absolute) position


class CapacityTallies:
    """Hosts per stage (``CPU_STAGE`` … ``LEFT``) for each slot, over ``n`` hosts."""

    def __init__(self, n: int) -> None:
        self._kept = max(1, min(SLOTS_KEPT, SLOTS_BUDGET_BYTES // max(n, 1)))
        self._slots: dict[Hashable, _Slot] = {}
        # The last changes: (host, free before, free after); _log[0] is change number _start.
        self._log: list[tuple[int, Free, Free]] = []
        self._start = 0

    def counts(self, key: Hashable, reach: np.ndarray, need: Free, free: np.ndarray
               ) -> list[int]:
        """The four counts of slot ``key`` (read-only): the hosts in the mask ``reach`` by
        stage for ``need``, given ``free`` (3, n) now. The same key must always mean the same
        mask and need."""
        now = self._start + len(self._log)
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= self._kept:
                self._slots.clear()
            slot = self._slots[key] = _Slot(reach, need, count_stages(free, reach, need), now)
        elif now - slot.seen > REPLAY_LIMIT or slot.seen < self._start:
            slot.counts = count_stages(free, slot.reach, need)
            slot.seen = now
        elif slot.seen < now:
            counts, inside = slot.counts, slot.reach
            c, m, d = need
            for i, (c0, m0, d0), (c1, m1, d1) in self._log[slot.seen - self._start:]:
                if c0 >= c and m0 >= m and d0 >= d and c1 >= c and m1 >= m and d1 >= d:
                    continue  # left standing before and after: the usual case, told first
                # The stage before and after, written out: this loop is the hot spot.
                was = (CPU_STAGE if c0 < c else MEMORY_STAGE if m0 < m else
                       DISK_STAGE if d0 < d else LEFT)
                moved_to = (CPU_STAGE if c1 < c else MEMORY_STAGE if m1 < m else
                            DISK_STAGE if d1 < d else LEFT)
                if was != moved_to and inside[i]:
                    counts[was] -= 1
                    counts[moved_to] += 1
            slot.seen = now
        return slot.counts

    def moved(self, i: int, old_free: Free, new_free: Free) -> None:
        """Host ``i``'s free room went from ``old_free`` to ``new_free``."""
        self._log.append((i, old_free, new_free))
        if len(self._log) > 2 * REPLAY_LIMIT:  # older entries are never replayed
            del self._log[:REPLAY_LIMIT]
            self._start += REPLAY_LIMIT
