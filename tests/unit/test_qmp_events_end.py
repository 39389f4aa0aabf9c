"""The VM's watcher learns that QEMU exited whenever its monitor hangs up (node/qemu/qmp.py's
Session.events).

qemu.qmp tells a runstate change only to those already waiting for one (it sets its event and
clears it at once). A hang-up that came after the session looked at its runstate and before its
wait had begun was missed: the watcher waited forever, and the VM stayed "stopping" (CI saw a
start refused, and a kill that could not end it). The client here keeps qemu.qmp's rule and
hangs up at exactly that moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qemu.qmp.protocol import Runstate

from virtpool.node.qemu.qmp import Session

NO_HANG_S = 5.0


class _Listener:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def get(self) -> dict[str, Any]:
        return await self.queue.get()

    def clear(self) -> list[dict[str, Any]]:
        left = []
        while not self.queue.empty():
            left.append(self.queue.get_nowait())
        return left


class _HangsUpAfterItsLastEvent:
    """A monitor client (what Session uses of qemu.qmp's QMPClient) whose QEMU sends one event
    and hangs up just after the session's next look at the runstate."""

    def __init__(self) -> None:
        self._runstate = Runstate.RUNNING
        self._event = asyncio.Event()
        self._listener = _Listener()
        self._listener.queue.put_nowait({"event": "SHUTDOWN", "data": {"guest": True}})
        self.looks = 0

    @property
    def runstate(self) -> Runstate:
        self.looks += 1
        if self._listener.queue.empty() and self._runstate == Runstate.RUNNING:
            # Its last event was taken: the hang-up lands before anything else runs.
            asyncio.get_running_loop().call_soon(self._hang_up)
        return self._runstate

    def _hang_up(self) -> None:
        self._runstate = Runstate.DISCONNECTING
        self._event.set()  # as qemu.qmp's _set_state: only who waits already hears it
        self._event.clear()

    async def runstate_changed(self) -> Runstate:
        await self._event.wait()
        return self._runstate

    @contextmanager
    def listener(self) -> Iterator[_Listener]:
        yield self._listener


async def _events_of(client: _HangsUpAfterItsLastEvent) -> list[str]:
    session = Session(client, vm="exiting")  # type: ignore[arg-type]
    got: list[str] = []

    async def drain() -> None:
        async for name, _data in session.events():
            got.append(name)

    try:
        await asyncio.wait_for(drain(), NO_HANG_S)
    except TimeoutError:
        got.append("still waiting")
    return got


def test_the_events_end_when_the_monitor_hangs_up_between_a_look_and_the_wait() -> None:
    async def run() -> tuple[list[str], int]:
        client = _HangsUpAfterItsLastEvent()
        return await _events_of(client), client.looks

    got, looks = asyncio.run(run())
    assert got == ["SHUTDOWN"], got
    assert looks < 10, looks  # ended by the hang-up it heard, not by a loop of looks
