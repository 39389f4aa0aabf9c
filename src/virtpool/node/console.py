"""A VM's serial console, read by the agent alone: logged under a hard cap, shared by every
open console.

QEMU's console chardev is a socket without a log file of its own, and the agent is its one
client (``ConsolePump``). Every byte the guest writes is appended to the serial log through
``serial.BoundedLog`` (so the log never passes its cap: QEMU, which the guest may flood, does
not write it) and handed to each open console (``SharedConsole``); what a console types goes
to the guest. A console that stops reading while the guest writes is closed once
``MAX_PENDING_BYTES`` wait for it, so that it holds neither the log nor the other consoles up.

While no pump is connected (the agent restarting) QEMU drops the console's output, as a
socket chardev without a client does.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from virtpool.model.errors import Conflict, OperationFailed
from virtpool.node.qemu import peer
from virtpool.node.safe_files import UnsafeFile
from virtpool.node.serial import BoundedLog

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 64 * 1024
CONNECT_POLL_S = 0.02  # QEMU makes the socket early in its start: poll for it briefly
CONNECT_TIMEOUT_S = 30.0
MAX_PENDING_BYTES = 4 * 1024 * 1024  # output a console has not read yet, before it is closed


class ConsolePump:
    """Reads one QEMU's console socket until QEMU closes it; logs it and shares it."""

    def __init__(self, vm: str, sock: Path, serial_log: BoundedLog) -> None:
        self._vm = vm
        self._sock = sock
        self._log = serial_log
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._ended = False
        self._send_lock = asyncio.Lock()
        self._consoles: set[SharedConsole] = set()

    async def run(self) -> None:
        """Connect, then relay until QEMU closes the console (it exited) or the task is
        cancelled (the agent stops watching the VM)."""
        try:
            try:
                self._log.open()
            except (UnsafeFile, OSError) as err:  # planted by the VM's user: no log, console still
                log.warning("not logging the console of VM %s: %s", self._vm,
                            getattr(err, "message", None) or err)
            reader = await self._connect()
            if reader is None:
                return
            while chunk := await reader.read(CHUNK):
                self._log.write(chunk)
                for console in list(self._consoles):
                    console.feed(chunk)
        except (ConnectionError, OSError):
            pass  # QEMU went away mid-read: the end of its console
        finally:
            self._ended = True
            self._connected.set()  # whoever waits for a connection learns it is over
            if self._writer is not None:
                self._writer.close()
            self._log.close()
            for console in list(self._consoles):
                console.end()

    async def _connect(self) -> asyncio.StreamReader | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT_S
        while True:
            try:
                sock = await peer.connect(self._sock)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline:
                    log.warning("console of VM %s never answered; it is not logged", self._vm)
                    return None
                await asyncio.sleep(CONNECT_POLL_S)
            except OperationFailed as err:  # not a socket, or served by another user
                log.warning("not reading the console of VM %s: %s", self._vm, err.message)
                return None
        reader, self._writer = await asyncio.open_unix_connection(sock=sock, limit=CHUNK)
        self._connected.set()
        return reader

    async def open(self) -> SharedConsole:
        """A console on this VM's serial line: what the guest writes from now on, and a way
        to type to it."""
        try:
            await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            pass
        if self._ended or self._writer is None:
            raise Conflict(f"the console of VM '{self._vm}' is not connected",
                           hint="the VM may be stopping; check `virtpool vm show`")
        console = SharedConsole(self)
        self._consoles.add(console)
        return console

    async def send(self, data: bytes) -> None:
        if self._writer is None or self._ended:
            raise OperationFailed(f"the console of VM '{self._vm}' closed")
        async with self._send_lock:
            self._writer.write(data)
            await self._writer.drain()

    def forget(self, console: SharedConsole) -> None:
        self._consoles.discard(console)


class SharedConsole:
    """One open console (model.agent.Console): the guest's output since it opened, in order."""

    def __init__(self, pump: ConsolePump) -> None:
        self._pump = pump
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._ready = asyncio.Event()
        self._ended = False

    def feed(self, chunk: bytes) -> None:
        if self._ended:
            return
        if self._pending_bytes + len(chunk) > MAX_PENDING_BYTES:
            log.info("closing a console that stopped reading (%d bytes waited for it)", self._pending_bytes)
            self.end()
            return
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        self._ready.set()

    def end(self) -> None:
        self._ended = True
        self._pump.forget(self)
        self._ready.set()

    async def read(self) -> bytes:
        while not self._pending:
            if self._ended:
                return b""
            self._ready.clear()
            await self._ready.wait()
        chunk = self._pending.popleft()
        self._pending_bytes -= len(chunk)
        return chunk

    async def write(self, data: bytes) -> None:
        if self._ended:
            raise OperationFailed("the console is closed")
        await self._pump.send(data)

    async def close(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0
        self.end()


class CrossLoopConsole:
    """A ``SharedConsole``, which lives on the agent's event loop with its VM, used from
    another loop (the API's, or the agent service's): every call runs on the agent's loop."""

    def __init__(self, console: SharedConsole, loop: asyncio.AbstractEventLoop) -> None:
        self._console = console
        self._loop = loop

    async def _there(self, coro: Coroutine[Any, Any, T]) -> T:
        # Cancelling the wait (the websocket went away) cancels the call on the agent's loop.
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def read(self) -> bytes:
        return await self._there(self._console.read())

    async def write(self, data: bytes) -> None:
        await self._there(self._console.write(data))

    async def close(self) -> None:
        await self._there(self._console.close())
