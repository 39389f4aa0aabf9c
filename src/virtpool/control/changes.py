"""Waiting for a record to reach a condition: signalled by this process's writes, rechecked
on a short period for writes by other processes sharing the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Changes made by another process on the same database are not signalled here: they are seen
# within this long.
RECHECK_S = 1.0


class Changes:
    """A change counter that waiters block on. Thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    def notify(self) -> None:
        """Wake every waiter: something they may be waiting for changed."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait_until(self, read: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
        """Call ``read`` until ``done`` holds for its result or ``timeout`` passes; return the
        last result."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._generation
            value = read()  # read outside the lock; a change after `seen` is not missed
            remaining = deadline - time.monotonic()
            if done(value) or remaining <= 0:
                return value
            with self._cond:
                self._cond.wait_for(lambda seen=seen: self._generation != seen,
                                    min(remaining, RECHECK_S))
