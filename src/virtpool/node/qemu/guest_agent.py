"""qemu-guest-agent's commands as virtpool uses them: exec (whole or streamed), files, shutdown.

They go over a GuestAgentChannel (qga_channel.py), one per VM, which several callers share.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from virtpool.model.errors import CommandTimeout
from virtpool.model.spec import ExecOutput, ExecResult
from virtpool.node.qemu.qga_channel import (SYNC_ATTEMPT_S, SYNC_DEADLINE_S, GuestAgentChannel,
                                            GuestAgentError, GuestAgentGone)

__all__ = ["SYNC_DEADLINE_S", "GuestAgent", "GuestAgentChannel", "GuestAgentError", "GuestAgentGone"]

COMMAND_NOT_FOUND = 127
READ_CHUNK = 48 * 1024  # per guest-file-read: qemu-ga's replies stay well inside its 64 KiB lines
# Per guest-file-write to a command's input FIFO: below PIPE_BUF (4096), so that the one write(2)
# of the flush that follows is all or nothing, and below the stdio buffer qemu-ga's FILE gets
# (st_blksize, 4096 on the guest's tmpfs), so that guest-file-write itself only buffers.
INPUT_CHUNK = 4000
EXEC_HELPER_S = 30.0  # for mkfifo in the guest


class GuestAgent:
    """The guest agent's commands (exec, files, shutdown) over a GuestAgentChannel.

    Each request takes its turn on the channel on its own, so that the commands of several
    GuestAgents (one per caller) interleave on one VM's channel. One made by ``exclusive``
    has the channel to itself until its block ends. ``async with GuestAgent.open(...)`` is a
    connection of its own, for a socket no VM object owns.
    """

    def __init__(self, channel: GuestAgentChannel, *, held: bool = False, owned: bool = False) -> None:
        self._channel = channel
        self._vm = channel.vm
        self._held = held
        self._owned = owned

    @classmethod
    async def open(cls, sock: Path, *, vm: str, sync_timeout: float = SYNC_ATTEMPT_S,
                   deadline: float = SYNC_DEADLINE_S) -> GuestAgent:
        """A connection of its own, synchronized; raises GuestAgentError if the agent does not
        answer a sync (sent again each ``sync_timeout``) within ``deadline`` seconds."""
        channel = GuestAgentChannel(sock, vm=vm)
        try:
            await channel.connect(sync_timeout=sync_timeout, deadline=deadline)
        except BaseException:
            channel.close()
            raise
        return cls(channel, owned=True)

    @classmethod
    @asynccontextmanager
    async def exclusive(cls, channel: GuestAgentChannel) -> AsyncIterator[GuestAgent]:
        """A GuestAgent with ``channel`` to itself for the block (a freeze and its thaw, a
        restored guest's identity): everybody else's requests wait until it ends."""
        async with channel.exclusive():
            yield cls(channel, held=True)

    async def __aenter__(self) -> GuestAgent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the connection of one made by ``open``; the shared channel stays open."""
        if self._owned:
            self._channel.close()

    async def call(self, cmd: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one agent command and return its ``return`` value."""
        if self._held:
            return await self._channel.call_held(cmd, arguments)
        return await self._channel.call(cmd, arguments)

    async def write_file(self, path: str, data: bytes) -> None:
        """Write ``data`` to the guest's file ``path`` (made or truncated) from qemu-ga itself:
        no process is started in the guest."""
        handle = await self.call("guest-file-open", {"path": path, "mode": "w"})
        try:
            await self.call("guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(data).decode()})
        finally:
            await self.call("guest-file-close", {"handle": handle})

    async def shutdown(self, mode: str = "powerdown", *, answer_within: float = 5.0) -> None:
        """Ask the guest to power off (``mode`` "reboot" to reboot).

        The agent answers only a refusal (e.g. "Failed to connect to bus" in a guest without
        logind): success has no reply, the agent just goes away with the guest. So a refusal
        within ``answer_within`` seconds raises GuestAgentError; silence or a closed
        connection means the guest took the request.
        """
        if self._held:
            await self._channel.shutdown_held(mode, answer_within)
            return
        async with self._channel.exclusive():
            await self._channel.shutdown_held(mode, answer_within)

    async def exec(
        self, argv: list[str], *, timeout: float, stdin: bytes | None = None, poll: float = 0.02
    ) -> ExecResult:
        """Run ``argv`` in the guest and wait for it; the guest's exit code is returned."""
        args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if stdin is not None:
            args["input-data"] = base64.b64encode(stdin).decode()
        try:
            started = await self.call("guest-exec", args)
        except GuestAgentError as err:
            if "Failed to execute child process" not in err.message:
                raise
            # As a shell does: the command could not be found or run.
            return ExecResult(exit_code=COMMAND_NOT_FOUND, stdout="", stderr=err.message + "\n")
        pid = started["pid"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await self.call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                break
            if loop.time() >= deadline:
                await self._kill(pid)
                raise CommandTimeout(
                    f"command {argv[0]!r} in VM '{self._vm}' still running after {timeout:g}s: killed",
                    hint="raise --timeout, or run long jobs in the background in the guest",
                )
            await asyncio.sleep(poll)
            poll = min(poll * 2, 0.25)
        if "signal" in status and status.get("exitcode") is None:
            exit_code = 128 + int(status["signal"])
        else:
            exit_code = int(status.get("exitcode", 0))
        return ExecResult(
            exit_code=exit_code,
            stdout=_decode(status.get("out-data")),
            stderr=_decode(status.get("err-data")),
            truncated=bool(status.get("out-truncated") or status.get("err-truncated")),
        )

    async def exec_stream(
        self, argv: list[str], *, timeout: float, emit: Callable[[ExecOutput], None],
        stdin: bytes | Callable[[], bytes | None] | None = None, poll: float = 0.05,
    ) -> ExecResult:
        """Run ``argv`` in the guest, handing its output to ``emit`` while it runs.

        qemu-ga's own capture (guest-exec's capture-output) gives the output only once the
        command has ended. So the command runs under ``sh`` with stdout and stderr sent to two
        files of random names in the guest's /tmp (argv stays a list: the script is fixed, the
        command comes as its positional arguments), which are read from where the last read
        ended with guest-file-seek/-read while guest-exec-status is polled, then removed.

        ``stdin`` is the command's input whole (bytes), or taken while it runs: a callable that
        returns what came since it was last called (b"" when nothing yet, None once the input
        has ended). qemu-ga's guest-exec takes its input only whole, so streamed input goes
        through a FIFO in the guest's /tmp that the command reads as its stdin and qemu-ga
        writes with guest-file-write (see ``_Input``).
        """
        tag = secrets.token_hex(8)
        paths = {"stdout": f"/tmp/.virtpool-exec-{tag}.out", "stderr": f"/tmp/.virtpool-exec-{tag}.err"}
        script = 'o=$1; e=$2; shift 2; exec "$@" >"$o" 2>"$e"'
        fifo = f"/tmp/.virtpool-exec-{tag}.in"
        streamed = callable(stdin)
        if streamed:
            made = await self.exec(["mkfifo", "-m", "0600", fifo], timeout=EXEC_HELPER_S)
            if made.exit_code != 0:
                raise GuestAgentError(f"cannot make the input pipe for the command in VM '{self._vm}': "
                                      f"{made.stderr.strip() or made.exit_code}",
                                      hint="the guest needs mkfifo (coreutils or busybox)")
            script = 'o=$1; e=$2; i=$3; shift 3; exec "$@" <"$i" >"$o" 2>"$e"'
        args: dict[str, Any] = {"path": "/bin/sh", "arg": [
            "-c", script, "sh", paths["stdout"], paths["stderr"], *([fifo] if streamed else []), *argv]}
        if isinstance(stdin, bytes):
            args["input-data"] = base64.b64encode(stdin).decode()
        try:
            pid = (await self.call("guest-exec", args))["pid"]
        except GuestAgentError:
            if streamed:
                await self._remove([fifo], {})
            raise
        handles: dict[str, int] = {}
        offsets = dict.fromkeys(paths, 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        feed = None
        try:
            if streamed:
                feed = _Input(self, stdin, await self._open_input(fifo, pid))  # type: ignore[arg-type]
            while True:
                status = await self.call("guest-exec-status", {"pid": pid})
                await self._drain(paths, handles, offsets, emit)
                if status.get("exited"):
                    await self._drain(paths, handles, offsets, emit)  # what came before the exit
                    break
                if loop.time() >= deadline:
                    await self._kill(pid)
                    raise CommandTimeout(
                        f"command {argv[0]!r} in VM '{self._vm}' still running after {timeout:g}s: killed",
                        hint="raise --timeout, or run long jobs in the background in the guest")
                if feed is not None and await feed.send():
                    poll = 0.02  # input is moving: come back soon for more, and for its output
                await asyncio.sleep(poll)
                poll = min(poll * 1.5, 0.25)
        finally:
            if feed is not None:
                await feed.close()
            await self._remove([*paths.values(), *([fifo] if streamed else [])], handles)
        if "signal" in status and status.get("exitcode") is None:
            return ExecResult(exit_code=128 + int(status["signal"]), stdout="", stderr="")
        return ExecResult(exit_code=int(status.get("exitcode", 0)), stdout="", stderr="")

    async def _open_input(self, fifo: str, pid: int) -> int | None:
        """The write end of the command's input FIFO, once its shell opened the read end (the
        first thing it does). qemu-ga opens without blocking, which fails (ENXIO) while no
        reader is there yet. None when the command ended before: nobody is left to read."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXEC_HELPER_S
        pause = 0.01
        while True:
            try:
                return int(await self.call("guest-file-open", {"path": fifo, "mode": "w"}))
            except GuestAgentError as err:
                if "No such device or address" not in err.message or loop.time() >= deadline:
                    raise
            if (await self.call("guest-exec-status", {"pid": pid})).get("exited"):
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    async def _drain(self, paths: dict[str, str], handles: dict[str, int], offsets: dict[str, int],
                     emit: Callable[[ExecOutput], None]) -> None:
        """Hand on what the output files gained since the last read."""
        for stream, path in paths.items():
            if stream not in handles:
                try:
                    handles[stream] = await self.call("guest-file-open", {"path": path, "mode": "r"})
                except GuestAgentError:
                    continue  # the shell has not made it yet
            while True:
                # A seek first: a read at the end of a file that grows would stay at EOF.
                await self.call("guest-file-seek", {"handle": handles[stream], "offset": offsets[stream],
                                                    "whence": "set"})
                chunk = await self.call("guest-file-read", {"handle": handles[stream], "count": READ_CHUNK})
                data = base64.b64decode(chunk.get("buf-b64", ""))
                if data:
                    offsets[stream] += len(data)
                    emit(ExecOutput(stream=stream, data=data))  # type: ignore[arg-type]
                if len(data) < READ_CHUNK:
                    break

    async def _remove(self, paths: list[str], handles: dict[str, int]) -> None:
        for handle in handles.values():
            try:
                await self.call("guest-file-close", {"handle": handle})
            except GuestAgentError:
                pass
        try:
            remover = await self.call("guest-exec", {"path": "rm", "arg": ["-f", *paths]})
            for _ in range(50):
                if (await self.call("guest-exec-status", {"pid": remover["pid"]})).get("exited"):
                    break
                await asyncio.sleep(0.05)
        except GuestAgentError:
            pass  # the guest's /tmp is cleaned at its next boot

    async def _kill(self, pid: int) -> None:
        """Kill a guest command that outlived its timeout (qemu-ga has no kill of its own: the
        guest's `kill` does it), and reap it so that qemu-ga forgets it."""
        try:
            killer = await self.call("guest-exec", {"path": "kill", "arg": ["-KILL", str(pid)]})
            for _ in range(50):
                done = await self.call("guest-exec-status", {"pid": killer["pid"]})
                if done.get("exited"):
                    break
                await asyncio.sleep(0.05)
            await self.call("guest-exec-status", {"pid": pid})
        except GuestAgentError:
            pass  # the command ended on its own meanwhile, or the guest has no kill


def _decode(data: str | None) -> str:
    return base64.b64decode(data).decode(errors="replace") if data else ""


class _Input:
    """Streamed input of a command: written into its FIFO as the command reads it.

    qemu-ga opens the FIFO non-blocking: with the pipe full, the flush after a
    guest-file-write fails with EAGAIN and writes nothing (a chunk is below PIPE_BUF), and the
    FILE keeps its error flag until the next guest-file-write clears it. So a chunk is sent
    again after a refused flush, once an empty write has cleared the flag; until then it stays
    pending. A reader that went away (EPIPE) ends the input: the rest is dropped, as a pipe
    would.
    """

    def __init__(self, agent: GuestAgent, take: Callable[[], bytes | None], handle: int | None) -> None:
        self._agent = agent
        self._take = take
        self._handle: int | None = handle
        self._pending = b""
        self._ended = False

    async def send(self) -> bool:
        """Write what the pipe takes of the input so far; whether anything moved. At the end of
        the input, closes the FIFO: the command reads its end of file."""
        if self._handle is None:
            return False
        if not self._ended:
            more = self._take()
            if more is None:
                self._ended = True
            else:
                self._pending += more
        moved = False
        while self._pending:
            chunk = self._pending[:INPUT_CHUNK]
            try:
                await self._agent.call("guest-file-write", {"handle": self._handle,
                                                            "buf-b64": base64.b64encode(chunk).decode()})
                await self._agent.call("guest-file-flush", {"handle": self._handle})
            except GuestAgentError as err:
                if "Broken pipe" in err.message:  # the command closed its stdin, or ended
                    self._pending, self._ended = b"", True
                    break
                if "temporarily unavailable" not in err.message:
                    raise
                await self._clear_error()
                return moved  # the pipe is full: the chunk is sent again next time
            self._pending = self._pending[len(chunk):]
            moved = True
        if self._ended and not self._pending:
            await self.close()
        return moved

    async def _clear_error(self) -> None:
        try:
            await self._agent.call("guest-file-write", {"handle": self._handle, "buf-b64": ""})
        except GuestAgentError:
            pass  # the flag it reports is the one it clears

    async def close(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            await self._agent.call("guest-file-close", {"handle": handle})
        except GuestAgentError:
            pass  # a flush refused at close (nobody reads any more): nothing to keep
