"""The worker threads a page of VMs is read in (GET of one VM reads from the event loop:
store/async_reads.py).

A page must not hold the event loop, so it goes to a thread; the hop there and back is a share
of a fast read. ``loop.run_in_executor`` on a plain ``ThreadPoolExecutor`` costs
about a third of the CPU of Starlette's ``run_in_threadpool`` (anyio: a capacity limiter, a
cancel scope and a Python ``queue.Queue`` per call): 34-45 µs against 97-114 µs a hop with 32
concurrent callers (/work/notes/s6-api.md). Only for short reads that need neither anyio's
cancellation nor context variables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from virtpool.control.store.read_only import POOL_SIZE

T = TypeVar("T")

# As many as the read engine has connections: a thread never waits for one.
_THREADS = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="api-read")


async def in_read_thread(read: Callable[..., T], *args: object) -> T:
    """``read(*args)`` in one of the read threads."""
    return await asyncio.get_running_loop().run_in_executor(_THREADS, read, *args)
