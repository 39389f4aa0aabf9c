"""Long polls (``?wait=`` on an operation, ``?wait_for=`` on a VM) block a worker thread each,
and those threads also serve every other request. At most ``MAX_WAITERS`` hold one at a time;
beyond that a long poll answers at once with what is there now, and the client, which polls
again anyway, loses nothing but a round trip.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Of the server's 40 worker threads (AnyIO's default), enough stay free for everything else.
MAX_WAITERS = 24
_slots = threading.BoundedSemaphore(MAX_WAITERS)


@contextmanager
def waiting(timeout: float) -> Iterator[float]:
    """The time this long poll may wait: ``timeout``, or 0 when every slot is taken."""
    if not _slots.acquire(blocking=False):
        yield 0.0
        return
    try:
        yield timeout
    finally:
        _slots.release()
