"""The one connection to a guest's agent (qemu-ga), shared by everyone who talks to it.

qemu-ga serves one client over its virtio-serial port and answers one request at a time, in
order. So the unit of exclusion here is one request and its reply, not a whole conversation:
many callers (execs polling their commands, a stop, an address lookup) take turns per request
on one connection, and a long command holds nobody back.

Two rules keep every reply with the caller that asked for it:

- A request and the read of its reply run in a task of their own, which the caller awaits
  shielded. A caller that is cancelled while its reply is in flight (its client went away, its
  own timeout) leaves the task to read that reply and throw it away; the next request is sent
  only once the previous one's task has ended (``_settle``).
- Whenever the channel can no longer be sure which reply comes next (a request went
  unanswered too long, a ``guest-shutdown`` had no reply, the connection broke), the connection
  is dropped; the next request opens a new one and synchronizes it with
  ``guest-sync-delimited``, whose 0xFF delimiter skips whatever late replies the agent still
  had to say.

Hand-written rather than ``qemu.qmp``: QGA has no greeting, and ``qemu.qmp`` cannot parse the
sync's 0xFF byte.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from virtpool.model.errors import OperationFailed
from virtpool.node.qemu import peer

SYNC_DELIMITER = b"\xff"
MAX_OUTPUT_BYTES = 16 * 1024 * 1024  # QGA caps captured output at 16 MiB itself
# A sync unanswered this long is sent again, until the overall deadline: under load (20+ on two
# cores) a booted guest's agent was seen to take more than a second to answer.
SYNC_ATTEMPT_S = 1.0
SYNC_DEADLINE_S = 10.0
# A request unanswered this long means the agent lost it (restarted in the guest, or hung): the
# connection is reset rather than every later caller left waiting behind it. Far above any
# answer seen under load; a guest paused that long loses its in-flight request too.
REPLY_DEADLINE_S = 120.0


class GuestAgentError(OperationFailed):
    """The guest agent refused a command or could not be reached."""


class GuestAgentGone(GuestAgentError):
    """The connection to the guest agent broke mid-call (QEMU may have exited)."""


class _Connection:
    """One Unix-socket connection to the agent: lines of JSON each way."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, vm: str) -> None:
        self._reader = reader
        self._writer = writer
        self._vm = vm

    @classmethod
    async def open(cls, sock: Path, vm: str, *, sync_timeout: float, deadline: float) -> _Connection:
        """Connect and synchronize; GuestAgentError when the agent does not answer.

        A sync unanswered within ``sync_timeout`` is sent again (a new token on the same
        connection; the late answers to earlier ones are skipped), until ``deadline`` seconds
        have passed in all: an agent on a busy host answers late, not never.
        """
        try:
            reader, writer = await asyncio.open_unix_connection(
                sock=await peer.connect(sock), limit=4 * MAX_OUTPUT_BYTES)
        except OSError as err:
            raise GuestAgentError(f"cannot connect to the guest agent of VM '{vm}': {err}") from err
        conn = cls(reader, writer, vm)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(deadline, sync_timeout)
        try:
            while True:
                attempt = min(sync_timeout, give_up - loop.time())
                try:
                    await asyncio.wait_for(conn._sync(), attempt)
                    return conn
                except TimeoutError:
                    if loop.time() + 0.001 >= give_up:
                        raise
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as err:
            conn.close()
            raise GuestAgentError(f"the guest agent of VM '{vm}' does not answer") from err
        except BaseException:
            conn.close()
            raise

    async def _sync(self) -> None:
        token = random.randrange(1, 2**31)
        await self.send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        await self._reader.readuntil(SYNC_DELIMITER)
        while True:
            if (await self.read()).get("return") == token:
                return

    async def send(self, message: dict[str, Any]) -> None:
        try:
            self._writer.write(json.dumps(message).encode() + b"\n")
            await self._writer.drain()
        except OSError as err:
            raise GuestAgentGone(f"the guest agent of VM '{self._vm}' dropped the connection: {err!r}") from err

    async def read(self) -> dict[str, Any]:
        try:
            line = await self._reader.readline()
        except OSError as err:
            raise GuestAgentGone(f"the guest agent of VM '{self._vm}' dropped the connection: {err!r}") from err
        if not line:
            raise GuestAgentGone(f"the guest agent of VM '{self._vm}' closed the connection")
        reply = json.loads(line.lstrip(SYNC_DELIMITER))
        if not isinstance(reply, dict):
            raise ValueError(f"not a reply: {line[:80]!r}")
        return reply

    def close(self) -> None:
        # Not waited for: the reader sees its end of file at once, and nothing is left to say.
        self._writer.close()


class GuestAgentChannel:
    """The guest agent of one VM, for as long as its QEMU runs; shared by all its callers.

    The connection is opened (and synchronized) at the first request and kept: a broken one
    is opened again at the next request. ``close`` ends the channel for good (QEMU exited):
    every call waiting on it, and every later one, raises GuestAgentGone.
    """

    def __init__(self, sock: Path, *, vm: str) -> None:
        self._sock = sock
        self._vm = vm
        self._lock = asyncio.Lock()  # whoever sends the next request
        self._conn: _Connection | None = None
        self._inflight: asyncio.Task[Any] | None = None
        self._broke = False  # a connection of this channel broke: a refused reconnect is the VM gone
        self._closed = False

    @property
    def vm(self) -> str:
        """The name of the VM, for messages."""
        return self._vm

    async def connect(self, *, sync_timeout: float = SYNC_ATTEMPT_S, deadline: float = SYNC_DEADLINE_S) -> None:
        """Until the agent answers a sync (at once when connected); GuestAgentError when it
        does not within ``deadline``."""
        async with self._lock:
            await self._settle()
            await self._run(self._ensure_connected(sync_timeout, deadline))

    async def call(self, cmd: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one agent command and return its ``return`` value; waits its turn."""
        async with self._lock:
            return await self.call_held(cmd, arguments)

    async def call_held(self, cmd: str, arguments: dict[str, Any] | None = None) -> Any:
        """``call`` for a caller inside ``exclusive``, which already has the channel."""
        await self._settle()
        reply = await self._run(self._exchange(_message(cmd, arguments)))
        if "error" in reply:
            desc = reply["error"].get("desc", reply["error"])
            raise GuestAgentError(f"the guest agent of VM '{self._vm}' refused '{cmd}': {desc}")
        return reply.get("return")

    async def shutdown_held(self, mode: str, answer_within: float) -> None:
        """Send ``guest-shutdown``: see GuestAgent.shutdown."""
        await self._settle()
        reply = await self._run(self._exchange(_message("guest-shutdown", {"mode": mode}),
                                               no_reply_within=answer_within))
        if reply is not None and "error" in reply:
            desc = reply["error"].get("desc", reply["error"])
            raise GuestAgentError(f"the guest agent of VM '{self._vm}' refused to shut down: {desc}")

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """The channel to one caller for several requests in a row (a freeze and its thaw):
        everybody else's requests wait. Inside, use the ``*_held`` calls."""
        async with self._lock:
            yield

    @asynccontextmanager
    async def set_back(self) -> AsyncIterator[None]:
        """Around a live snapshot restore, which sets the guest's agent back to the snapshot's
        moment: it may then say again what it said then (a reply this channel already read),
        or wait for a reply it already had. No request is in flight across it, and the next
        one opens a new connection and synchronizes it (the sync's delimiter skips those old
        words)."""
        async with self._lock:
            await self._settle()
            try:
                yield
            finally:
                self._drop()

    def close(self) -> None:
        """End the channel: the request in flight and all waiting ones raise GuestAgentGone."""
        self._closed = True
        self._drop()

    # -- the request in flight ------------------------------------------------------------

    async def _settle(self) -> None:
        """Until the previous request's task has read its reply (or given up): its caller may
        have gone, its reply must still be taken off the connection before the next request."""
        task = self._inflight
        if task is not None and not task.done():
            await asyncio.wait([task])

    async def _run(self, work: Any) -> Any:
        """Run ``work`` (a coroutine that sends and reads) as the request in flight, shielded
        from the caller's cancellation."""
        if self._closed:
            work.close()
            raise self._gone()
        task = asyncio.get_running_loop().create_task(work, name=f"qga-{self._vm}")
        task.add_done_callback(_consume)
        self._inflight = task
        return await asyncio.shield(task)

    async def _ensure_connected(self, sync_timeout: float = SYNC_ATTEMPT_S,
                                deadline: float = SYNC_DEADLINE_S) -> _Connection:
        if self._conn is None:
            try:
                conn = await _Connection.open(self._sock, self._vm, sync_timeout=sync_timeout, deadline=deadline)
            except GuestAgentError as err:
                if self._broke:  # it was there and went away: QEMU exited, or is exiting
                    raise self._gone() from err
                raise
            if self._closed:  # closed while this connected
                conn.close()
                raise self._gone()
            self._conn = conn
        return self._conn

    async def _exchange(self, message: dict[str, Any], *, no_reply_within: float | None = None) -> Any:
        """Send one request and read its reply. With ``no_reply_within``, a request whose
        success has no reply: None when none came in that time."""
        conn = await self._ensure_connected()
        try:
            await conn.send(message)
            if no_reply_within is not None:
                try:
                    return await asyncio.wait_for(conn.read(), no_reply_within)
                except (TimeoutError, GuestAgentGone):
                    # Taken (the guest is on its way down), or a refusal still to come late:
                    # either way the next request must not read after this one.
                    self._broke = True
                    self._drop()
                    return None
            return await asyncio.wait_for(conn.read(), REPLY_DEADLINE_S)
        except TimeoutError:
            self._drop()
            raise GuestAgentError(
                f"the guest agent of VM '{self._vm}' did not answer '{message['execute']}' within "
                f"{REPLY_DEADLINE_S:g}s; its connection was reset",
                hint="check that qemu-guest-agent runs in the guest and the VM is not paused") from None
        except ValueError as err:
            self._drop()
            raise GuestAgentError(f"the guest agent of VM '{self._vm}' sent what is no reply: {err}") from err
        except GuestAgentGone:
            self._broke = True
            self._drop()
            if self._closed:
                raise self._gone() from None
            raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _gone(self) -> GuestAgentGone:
        return GuestAgentGone(f"the guest agent of VM '{self._vm}' is gone: its QEMU exited",
                              hint=f"start the VM again (virtpool vm start {self._vm}) and retry")


def _message(cmd: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"execute": cmd}
    if arguments is not None:
        message["arguments"] = arguments
    return message


def _consume(task: asyncio.Task[Any]) -> None:
    """A request's outcome whose caller went away is nobody's error to log."""
    if not task.cancelled():
        task.exception()
