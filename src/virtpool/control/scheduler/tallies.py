"""What the capacity filters remove, per request shape, kept exact claim by claim.

A decision's counters ("N of M hosts could take it", "7 hosts lack memory") need, among the
hosts that passed every attribute filter, how many lack vCPUs, then memory, then disk. Counting
that afresh is three passes over the pool per request. ``CapacityTallies`` counts it once per
*slot* (a request shape: which hosts reach the capacity filters, and the vCPUs and MiB asked)
and then moves one host between the counts whenever that host's free room changes, so a
decision reads four integers.

Never decides anything itself, and never does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np

# Request shapes counted at once; beyond this the tallies start over (like the static masks).
SLOTS_KEPT = 256
# The stage a host stops at: removed by the cpu, memory or disk filter, or left standing.
CPU_STAGE, MEMORY_STAGE, DISK_STAGE, LEFT = 0, 1, 2, 3


def stages(free: np.ndarray, need: np.ndarray) -> np.ndarray:
    """Where the capacity filters stop each host: ``free`` (3, n) against one ``need`` (3,), or
    one host's ``free`` (3,) against many needs (3, m); a stage per host or per need."""
    cpu_ok = free[0] >= need[0]
    memory_ok = cpu_ok & (free[1] >= need[1])
    disk_ok = memory_ok & (free[2] >= need[2])
    return cpu_ok.astype(np.int64) + memory_ok + disk_ok


class CapacityTallies:
    """Hosts per stage (``CPU_STAGE`` … ``LEFT``) for each slot, over ``n`` hosts."""

    def __init__(self, n: int) -> None:
        self._slots: dict[Hashable, int] = {}
        # Column s: the hosts slot s counts (row i contiguous, for moving one host).
        self._reach = np.zeros((n, SLOTS_KEPT), dtype=bool)
        self._need = np.zeros((SLOTS_KEPT, 3), dtype=np.int64)
        self._counts = np.zeros((SLOTS_KEPT, 4), dtype=np.int64)

    def counts(self, key: Hashable, reach: Callable[[], np.ndarray], need: tuple[int, int, int],
               free: np.ndarray) -> np.ndarray:
        """The four counts of slot ``key`` (read-only): the hosts in the mask ``reach()`` by
        stage for ``need``, given ``free`` (3, n) now. Counted from scratch the first time a
        key is seen (the only time ``reach`` is called); the same key must always mean the
        same mask and need."""
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= SLOTS_KEPT:
                self._slots.clear()
                self._reach[:] = False
            slot = self._slots[key] = len(self._slots)
            hosts = reach()
            self._reach[:, slot] = hosts
            self._need[slot] = need
            wanted = np.asarray(need, dtype=np.int64)
            self._counts[slot] = np.bincount(stages(free[:, hosts], wanted), minlength=4)
        return self._counts[slot]

    def moved(self, i: int, old_free: tuple[int, int, int], new_free: tuple[int, int, int]
              ) -> None:
        """Host ``i``'s free room went from ``old_free`` to ``new_free``: recount it."""
        used = len(self._slots)
        slots = np.flatnonzero(self._reach[i, :used])
        if slots.size == 0:
            return
        needs = self._need[slots].T
        before = stages(np.asarray(old_free, dtype=np.int64), needs)
        after = stages(np.asarray(new_free, dtype=np.int64), needs)
        changed = before != after
        if changed.any():
            slots, before, after = slots[changed], before[changed], after[changed]
            self._counts[slots, before] -= 1
            self._counts[slots, after] += 1
