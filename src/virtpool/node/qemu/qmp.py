"""One long-lived QMP session per VM, through the QEMU project's own ``qemu.qmp`` library.

The session carries the VM's commands and its events over one connection to ``qmp.sock``
(QEMU serves one client per monitor). It stays open for as long as QEMU runs: its closing is
how the agent learns, at once, that QEMU has gone. Because nothing else in the agent opens the
monitor, a future migration can hand the session's VM over without a second client in the way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError
from qemu.qmp.protocol import Runstate

from virtpool.model.errors import OperationFailed
from virtpool.node.qemu import peer

log = logging.getLogger(__name__)
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # it logs every lost socket as an error

COMMAND_TIMEOUT_S = 10.0
RUNSTATE_RECHECK_S = 1.0  # the event wait looks at the session's runstate at least this often


class Session:
    """A connected QMP client for one VM's monitor."""

    def __init__(self, client: QMPClient, vm: str) -> None:
        self._client = client
        self._vm = vm

    @classmethod
    async def open(cls, sock: Path, *, vm: str, timeout: float) -> Session:
        """Connect to ``sock``, retrying while QEMU is still creating it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            client = QMPClient(vm)
            try:
                # Bounded: whatever listens there (a QEMU its guest took over) may never greet.
                await asyncio.wait_for(client.connect(await peer.connect(sock)),
                                       max(0.1, deadline - loop.time()))
                return cls(client, vm)
            except (ConnectError, OSError, asyncio.TimeoutError) as err:
                await cls(client, vm).close()
                if loop.time() >= deadline:
                    raise OperationFailed(f"cannot reach QMP socket {sock}: {err!r}") from err
                await asyncio.sleep(0.05)

    @property
    def client(self) -> QMPClient:
        """The ``qemu.qmp`` client itself, for callers that pass file descriptors."""
        return self._client

    @property
    def connected(self) -> bool:
        return self._client.runstate == Runstate.RUNNING

    async def execute(self, cmd: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run one command and return its result; raises OperationFailed."""
        try:
            return await asyncio.wait_for(self._client.execute(cmd, arguments), COMMAND_TIMEOUT_S)
        except ExecuteError as err:
            raise OperationFailed(f"QEMU refused '{cmd}' for VM '{self._vm}': {err.error.error.desc}") from err
        except (TimeoutError, QMPError, OSError, EOFError) as err:
            raise OperationFailed(f"QMP command '{cmd}' for VM '{self._vm}' failed: {err!r}") from err

    async def events(self) -> Any:
        """Yield (name, data) of every event until QEMU closes the monitor (it exited)."""
        with self._client.listener() as listener:
            while True:
                # qemu.qmp tells a runstate change only to those already waiting (it sets its
                # event and clears it at once): the wait is begun, and the runstate looked at
                # only once it has, so that a hang-up in between is not missed (it was, and
                # left the VM "stopping" for good). The timeout is a second guard.
                change = asyncio.ensure_future(self._client.runstate_changed())
                await asyncio.sleep(0)
                if self._client.runstate != Runstate.RUNNING:
                    change.cancel()
                    break
                get = asyncio.ensure_future(listener.get())
                try:
                    await asyncio.wait({get, change}, timeout=RUNSTATE_RECHECK_S,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (get, change):
                        if not task.done():
                            task.cancel()
                if get.done() and not get.cancelled():
                    event = get.result()
                    yield str(event.get("event")), event.get("data") or {}
            for event in listener.clear():
                yield str(event.get("event")), event.get("data") or {}

    async def close(self) -> None:
        # disconnect() re-raises whatever ended the session; QEMU hanging up (EOFError,
        # ConnectionResetError) is how a session ends when QEMU exits, not a failure.
        try:
            await self._client.disconnect()
        except (QMPError, EOFError, OSError):
            pass
