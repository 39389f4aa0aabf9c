"""QMP through the QEMU project's own ``qemu.qmp`` library.

Each VM has two monitors: ``qmp.sock`` for commands (a short connection per command, so that
any caller can use it) and ``events.sock``, which the agent holds open for as long as the VM
runs. The events connection closing is how the agent learns, at once, that QEMU has gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError
from qemu.qmp.protocol import Runstate

from virtpool.model.errors import OperationFailed
from virtpool.node.qemu import peer

log = logging.getLogger(__name__)
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # it logs every lost socket as an error

COMMAND_TIMEOUT_S = 10.0


async def connect(sock: Path, *, name: str, timeout: float) -> QMPClient:
    """Connect to a QMP socket, retrying while QEMU is still creating it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        client = QMPClient(name)
        try:
            # Bounded: whatever listens there (a QEMU its guest took over) may never greet.
            await asyncio.wait_for(client.connect(await peer.connect(sock)),
                                   max(0.1, deadline - loop.time()))
            return client
        except (ConnectError, OSError, asyncio.TimeoutError) as err:
            await _close_quietly(client)
            if loop.time() >= deadline:
                raise OperationFailed(f"cannot reach QMP socket {sock}: {err!r}") from err
            await asyncio.sleep(0.05)


async def command(
    sock: Path, cmd: str, arguments: Mapping[str, Any] | None = None, *, vm: str
) -> Any:
    """Run one QMP command and return its result."""
    client = await connect(sock, name=f"{vm}-cmd", timeout=2.0)
    try:
        return await asyncio.wait_for(client.execute(cmd, arguments), COMMAND_TIMEOUT_S)
    except ExecuteError as err:
        raise OperationFailed(f"QEMU refused '{cmd}' for VM '{vm}': {err.error.desc}") from err
    except (TimeoutError, QMPError) as err:
        raise OperationFailed(f"QMP command '{cmd}' for VM '{vm}' failed: {err!r}") from err
    finally:
        await _close_quietly(client)


async def _close_quietly(client: QMPClient) -> None:
    # disconnect() re-raises whatever ended the session; QEMU hanging up (EOFError,
    # ConnectionResetError) is how a session ends when QEMU exits, not a failure.
    try:
        await client.disconnect()
    except (QMPError, EOFError, OSError):
        pass


EventHandler = Callable[[str, Mapping[str, Any]], Awaitable[None] | None]


async def watch(sock: Path, on_event: EventHandler, *, vm: str, connect_timeout: float) -> None:
    """Deliver every QMP event to ``on_event`` until QEMU closes the monitor (it exited).

    Returns when the connection is gone; raises OperationFailed if it never came up.
    """
    client = await connect(sock, name=f"{vm}-events", timeout=connect_timeout)
    try:
        with client.listener() as listener:
            while client.runstate == Runstate.RUNNING:
                get = asyncio.ensure_future(listener.get())
                change = asyncio.ensure_future(client.runstate_changed())
                await asyncio.wait({get, change}, return_when=asyncio.FIRST_COMPLETED)
                for task in (get, change):
                    if not task.done():
                        task.cancel()
                if get.done() and not get.cancelled():
                    await _deliver(on_event, get.result())
            for event in listener.clear():
                await _deliver(on_event, event)
    finally:
        await _close_quietly(client)


async def _deliver(on_event: EventHandler, event: Mapping[str, Any]) -> None:
    result = on_event(str(event.get("event")), event.get("data") or {})
    if asyncio.iscoroutine(result):
        await result
