"""A command in a guest with its input streamed, over a websocket: the serving side (the API
for its users, an agent for the control plane) and the calling side (the SDK, the control
plane's remote agent), one exchange for both hops.

Why a websocket: piped input must reach the command while its output comes back, and an
HTTP/1.1 client (http.client, httpx) sends a request's whole body before it reads the answer.

The exchange: the caller's first message is text, ``{"argv": [...], "timeout": SECONDS}``;
then binary messages, the command's stdin as it comes, and an empty one at its end. The server
sends text messages, one line of model/exec_lines.py each (``{"stdout": B64}`` or
``{"stderr": B64}`` as the command writes, then ``{"exit_code": N}``, or ``{"problem": {...}}``
for a refusal), and closes.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from virtpool.model import exec_lines
from virtpool.model.errors import InvalidRequest, VirtpoolError
from virtpool.model.spec import ExecOutput, ExecResult

if TYPE_CHECKING:
    from starlette.websockets import WebSocket
    from websockets.sync.connection import Connection

STDIN_DEPTH = 8  # chunks held between the socket and the command; beyond, the sender waits

Start = Callable[[list[str], float, Iterable[bytes]], Iterator[ExecOutput | ExecResult]]


class Guard(Protocol):
    """The caller's right to keep the session (api/access_guard.py's AccessGuard)."""

    lost: bool
    reason: str
    close_code: int  # what the session is closed with once lost

    async def watch(self) -> str:
        """Return once the caller has lost the right to the session."""


class InputRelay:
    """The command's input as it arrives on the socket, as a byte stream for the agent
    contract (iterated on another thread). Ends with the caller's empty message, a lost
    caller, or :meth:`end`."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(STDIN_DEPTH)
        self._ended = threading.Event()

    def put(self, chunk: bytes) -> None:
        """Hand on a chunk, waiting while the command has not taken the earlier ones."""
        while not self._ended.is_set():
            try:
                self._queue.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue

    def end(self) -> None:
        self._ended.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the iterator sees the flag once it has taken what is queued

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._ended.is_set():
                    return
                continue
            if chunk is None:
                return
            yield chunk


def read_request(text: str) -> tuple[list[str], float]:
    """The first message: argv and timeout; InvalidRequest when it is not one."""
    try:
        request = json.loads(text)
        argv, timeout = request["argv"], float(request.get("timeout", 60.0))
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidRequest('the first message must be {"argv": [...], "timeout": SECONDS}') from err
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise InvalidRequest("argv must be a list of strings", hint="e.g. [\"cat\"]")
    return argv, timeout


async def serve(websocket: WebSocket, start: Start, guard: Guard | None = None) -> None:
    """Run one command for an accepted websocket: read its request, relay its input to
    ``start``'s command and the command's output back, then close. With a ``guard``, the
    session ends (with the guard's close code) once the caller loses its right, and no input sent after
    that reaches the command."""
    from starlette.websockets import WebSocketDisconnect

    relay = InputRelay()

    async def take_input() -> None:
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is None:
                    continue  # text after the request means nothing
                if not data or (guard is not None and guard.lost):
                    return
                await asyncio.to_thread(relay.put, data)
        finally:
            relay.end()

    async def pump(items: Iterator[ExecOutput | ExecResult]) -> None:
        lines = exec_lines.encode(items)
        while (line := await asyncio.to_thread(next, lines, None)) is not None:
            await websocket.send_text(line)

    tasks: list[asyncio.Task[Any]] = []
    close_code, close_reason = 1000, ""
    try:
        try:
            first = await websocket.receive()
            if first["type"] == "websocket.disconnect":
                return
            argv, timeout = read_request(first.get("text") or "")
            items = await asyncio.to_thread(start, argv, timeout, relay)  # the checks run here
        except VirtpoolError as err:
            await websocket.send_text(exec_lines.problem(err))
            return
        output = asyncio.create_task(pump(items))
        tasks = [output, asyncio.create_task(take_input())]
        if guard is not None:
            tasks.append(asyncio.create_task(guard.watch()))
        pending = list(tasks)
        while True:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if guard is not None and guard.lost:
                close_code, close_reason = guard.close_code, guard.reason
                break
            if output in done:
                output.result()  # a caller lost while its output was sent surfaces here
                break
            pending = [t for t in pending if t not in done]
    except (WebSocketDisconnect, RuntimeError):
        pass  # the caller went away (a detach, Ctrl-C): that is how such a session ends
    finally:
        relay.end()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await websocket.close(code=close_code, reason=close_reason[:120])
        except (RuntimeError, WebSocketDisconnect, OSError):
            pass  # closed already


def call(connection: Connection, argv: list[str], timeout: float,
         stdin: Iterable[bytes]) -> Iterator[ExecOutput | ExecResult | dict[str, Any]]:
    """The calling side, on a connected websocket: send the request and, from a thread of its
    own, ``stdin``; yield what comes back (a dict: the problem of a refusal). Closes the
    connection when done."""
    from websockets.exceptions import ConnectionClosed

    def send_input() -> None:
        try:
            for chunk in stdin:
                if chunk:
                    connection.send(chunk)
            connection.send(b"")
        except ConnectionClosed:
            pass  # the command ended first: the rest of its input goes nowhere, as with a pipe

    with connection:  # closed when done, however it ends
        try:
            connection.send(json.dumps({"argv": argv, "timeout": timeout}))
            threading.Thread(target=send_input, name="exec-input", daemon=True).start()
            for message in connection:
                item = exec_lines.decode(message)
                if item is not None:
                    yield item
                if isinstance(item, (ExecResult, dict)):
                    return
        except ConnectionClosed:
            pass  # the caller says what a session that ended without its result means

