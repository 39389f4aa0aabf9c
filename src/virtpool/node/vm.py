"""One VM on this host: its paths, its QEMU process, its one QMP session, its watcher, its state.

A ``VM`` lives on the agent's event loop; every coroutine here runs there. Its ``runstate``
says what the agent knows of the VM's QEMU, and every call checks it first (``StateError``
names the state it found and the one it needs), in the style of ``qemu.qmp``'s own Runstate::

    IDLE ──spawn──▶ STARTING ──monitor answers──▶ RUNNING ──quit/kill──▶ STOPPING
      ▲   ◀─────── QEMU refused ─────┘               │                      │
      └──────────────── the watcher saw QEMU exit ◀──┴──────────────────────┘
    IDLE ──attach (a QEMU found by its pidfile)──▶ RUNNING

The session is opened once per QEMU process and kept: commands and events share it, and its
end is how the watcher learns that QEMU exited. What the VM does without being asked goes to
``notify`` (the agent's event feed); the VM never decides anything about the pool.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

import psutil

from virtpool.model.errors import BootTimeout, Conflict, OperationFailed
from virtpool.model.guest_identity import HOSTNAME_FILES, clock_argv
from virtpool.model.spec import ExecOutput, ExecResult
from virtpool.node import safe_files, serial
from virtpool.node.console import ConsolePump, SharedConsole
from virtpool.node.qemu import process
from virtpool.node.qemu.guest_agent import (SYNC_DEADLINE_S, GuestAgent, GuestAgentChannel, GuestAgentError,
                                            GuestAgentGone)
from virtpool.node.qemu.qmp import Session
from virtpool.node.vmdir import VMPaths

log = logging.getLogger(__name__)
STOP_AGENT_WAIT_S = 10.0  # how long a stop waits for the guest agent to take its request
T = TypeVar("T")

READY_POLL_S = 0.05  # between guest-agent pings while a guest boots
IDENTITY_POLL_S = 0.005  # the first wait for a restored guest's clock command (it doubles)
MONITOR_TIMEOUT_S = 30.0  # from spawn until QEMU's monitor answers (devices set up)
# To reach the monitor of a QEMU found running. Generous: a QEMU that misses it is killed, and a
# CPU-starved QEMU under TCG can take long to accept the monitor again after the previous
# agent's connection died with it (kill -9).
ATTACH_TIMEOUT_S = 30.0
HARD_STOP_GRACE_S = 3.0  # after QMP 'quit', before SIGKILL
# After SIGKILL, for the watcher to see QEMU go and tidy up (console drained, cgroup removed).
# Generous: on a loaded host that takes seconds, and a stop that returns before it would leave
# a VM that the next start finds still stopping.
KILLED_EXIT_S = 30.0
BALLOON_EVENT_EVERY_S = 1.0  # a balloon move fires BALLOON_CHANGE many times: one event a second
IO_ERROR_EVENT_EVERY_S = 1.0  # each failed request repeats BLOCK_IO_ERROR: one event a second
CONSOLE_DRAIN_S = 2.0  # after QEMU exited, for the console's last bytes to reach the log

# (kind, data) of something the VM did on its own: see model/agent.AgentEvent.
Notify = Callable[[str, dict[str, Any]], None]
# Awaited on the loop once QEMU is gone, before IDLE: releases what the host gave it (cgroup).
OnGone = Callable[["VM"], Awaitable[None]]
# Called on the loop after the guest rebooted itself (QEMU runs with -no-reboot, so a reset is
# an exit): starts the VM again in a new QEMU; True when it did.
Reboot = Callable[["VM"], Awaitable[bool]]


class Runstate(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


class StateError(Conflict):
    """A call needs the VM's QEMU in another state than the one it is in."""

    title = "wrong run state"

    def __init__(self, vm: str, actual: Runstate, required: Collection[Runstate]) -> None:
        wanted = " or ".join(sorted(s.value for s in required))
        super().__init__(f"VM '{vm}' has QEMU {actual.value}; this needs it {wanted}",
                         hint="check the VM's state (virtpool vm show) and try again")
        self.actual = actual
        self.required = frozenset(required)


class VM:
    """The agent's handle on one VM."""

    def __init__(self, vm_id: str, paths: VMPaths, name: str, notify: Notify, on_gone: OnGone,
                 reboot: Reboot | None = None, log_cap: int = serial.DEFAULT_CAP_BYTES) -> None:
        self.id = vm_id
        self.paths = paths
        self.name = name
        self.runstate = Runstate.IDLE
        self._notify = notify
        self._on_gone = on_gone
        self._reboot = reboot
        # A guest reset is a reboot to carry out when the guest had booted (a reset before that
        # is a boot that failed, e.g. a kernel panic) and nobody is stopping the VM.
        self.ready = False
        self.stopping = False
        self._reset = False
        self._proc: psutil.Process | None = None
        self._popen: subprocess.Popen[bytes] | None = None  # when this agent started it
        self._session: Session | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._log_cap = log_cap
        self._pump: ConsolePump | None = None  # the console's one reader, while QEMU runs
        self._pump_task: asyncio.Task[None] | None = None
        # Set while no QEMU of this VM runs (IDLE), except through a reboot, which its waiters
        # do not see as an end.
        self._gone = asyncio.Event()
        self._gone.set()
        # The guest agent, shared by every caller, one request at a time: opened with each
        # QEMU, closed when it exits.
        self._agent: GuestAgentChannel | None = None
        self._clock_task: asyncio.Task[None] | None = None  # a restored guest's clock being set
        self._guest_initiated = False
        self._last_balloon_event = 0.0
        self._last_io_error_event = 0.0
        # QEMU paused the guest on a disk error (its drives stop on ENOSPC): the agent resumes
        # it once the disk has room again (see LocalAgent's housekeeping).
        self.io_paused = False
        self.ended = "exited"  # how its last QEMU ended, for messages

    @property
    def guest_agent(self) -> GuestAgentChannel:
        """The channel to the guest's agent, while QEMU runs (StateError otherwise)."""
        self._require(Runstate.RUNNING)
        if self._agent is None:
            raise StateError(self.name, self.runstate, (Runstate.RUNNING,))
        return self._agent

    def _require(self, *states: Runstate) -> None:
        if self.runstate not in states:
            raise StateError(self.name, self.runstate, states)

    @property
    def process(self) -> psutil.Process | None:
        """The VM's QEMU while it runs."""
        return self._proc if self._proc is not None and process.alive(self._proc) else None

    # -- starting and finding -------------------------------------------------------------

    def clear_stale_files(self) -> None:
        """Before a start: sockets, pidfile and log a previous QEMU left behind."""
        self._require(Runstate.IDLE)
        process.remove_stale_files([*self.paths.sockets(), self.paths.passt_sock, self.paths.pidfile,
                                    self.paths.qemu_log])

    async def spawn(self, argv: list[str], popen_kwargs: dict[str, Any],
                    on_spawned: Callable[[int], None]) -> int:
        """Start QEMU; return its pid once its monitor answers. On failure nothing runs."""
        self._require(Runstate.IDLE)
        if process.find(self.paths.pidfile) is not None:
            raise Conflict(f"VM '{self.name}' already has a QEMU process",
                           hint="stop it first (virtpool vm stop)")
        self._begin()
        self.ready = self.stopping = False
        try:
            self._popen = process.spawn(argv, self.paths.qemu_log, vm=self.name, **popen_kwargs)
            self._proc = psutil.Process(self._popen.pid)
            on_spawned(self._popen.pid)
            self._start_console()  # at once: the guest's first words are logged too
            self._session = await self._open_monitor(self._popen)
        except BaseException:
            await self._kill_and_reap()
            await self._stop_console(drain=False)
            await self._on_gone(self)
            self._end()
            raise
        self._start_watching()
        return self._popen.pid

    async def _open_monitor(self, popen: subprocess.Popen[bytes]) -> Session:
        """The session, once QEMU has set up; or OperationFailed with what QEMU said."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MONITOR_TIMEOUT_S
        while True:
            if popen.poll() is not None:
                said = serial.tail(self.paths.qemu_log)
                if popen.returncode < 0:  # not a refusal: something killed it
                    raise OperationFailed(f"QEMU of VM '{self.name}' {how_it_ended(popen)} while it "
                                          "started" + (f"; it said: {said}" if said else ""))
                raise OperationFailed(f"QEMU refused to start VM '{self.name}': {said or how_it_ended(popen)}")
            try:
                return await Session.open(self.paths.qmp_sock, vm=self.name, timeout=0.5)
            except OperationFailed:
                if loop.time() > deadline:
                    raise OperationFailed(f"QEMU of VM '{self.name}' did not set up in "
                                          f"{MONITOR_TIMEOUT_S:g}s") from None

    async def attach(self) -> bool:
        """Find a QEMU of this VM started earlier (by its pidfile) and take it over."""
        if self.runstate in (Runstate.RUNNING, Runstate.STARTING):
            return True
        if self.runstate == Runstate.STOPPING:
            return False
        proc = process.find(self.paths.pidfile)
        if proc is None:
            # A QEMU whose pidfile its user removed or replaced must still be found.
            proc = process.scan(self.paths.pidfile)
        if proc is None:
            return False
        tampered = [f"{p.name} is {safe_files.describe(os.lstat(p).st_mode)}"
                    for p in self.paths.sockets() if os.path.lexists(p) and not _is_socket(p)]
        if tampered:
            # Its sockets were replaced (by its QEMU's user): a QEMU that cannot be controlled
            # is stopped, not left running unwatched.
            log.warning("stopping VM %s: its QEMU cannot be re-adopted: %s", self.name, "; ".join(tampered))
            await asyncio.to_thread(process.kill, proc)
            return False
        self._proc, self._popen = proc, None
        self.ready = True  # it ran before this agent started: it had booted
        self.stopping = False
        self._begin()
        try:
            self._session = await Session.open(self.paths.qmp_sock, vm=self.name, timeout=ATTACH_TIMEOUT_S)
        except OperationFailed as err:
            log.warning("stopping VM %s: its QEMU cannot be re-adopted: %s", self.name, err.message)
            await asyncio.to_thread(process.kill, proc)
            self._end()
            return False
        self._start_console()
        self._start_watching()
        try:
            # Paused on a disk error while no agent watched: resumed like one seen now.
            self.io_paused = await self.status() == "io-error"
        except OperationFailed:
            pass  # the watcher sees the QEMU go
        return True

    def _begin(self) -> None:
        self.runstate = Runstate.STARTING
        self._gone.clear()

    def _end(self) -> None:
        self.runstate = Runstate.IDLE
        self._gone.set()

    def _start_watching(self) -> None:
        self._agent = GuestAgentChannel(self.paths.qga_sock, vm=self.name)
        self._guest_initiated = self._reset = self.io_paused = False
        self.runstate = Runstate.RUNNING
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name=f"watch-{self.id}")

    # -- the serial console ---------------------------------------------------------------

    def _start_console(self) -> None:
        log_file = serial.BoundedLog(self.paths.serial_log, self._log_cap, vm=self.name)
        self._pump = ConsolePump(self.name, self.paths.console_sock, log_file)
        self._pump_task = asyncio.get_running_loop().create_task(self._pump.run(), name=f"console-{self.id}")

    async def _stop_console(self, *, drain: bool) -> None:
        """End the console's reader: with ``drain``, QEMU has exited and its last bytes are
        read to the end first (a panic's last lines are what a failed boot reports)."""
        task, self._pump, self._pump_task = self._pump_task, None, None
        if task is None:
            return
        if drain:
            await asyncio.wait([task], timeout=CONSOLE_DRAIN_S)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def open_console(self) -> SharedConsole:
        """The guest's serial line, shared with the log and any other open console."""
        self._require(Runstate.RUNNING)
        if self._pump is None:
            raise StateError(self.name, self.runstate, (Runstate.RUNNING,))
        return await self._pump.open()

    # -- QMP ------------------------------------------------------------------------------

    async def command(self, cmd: str, arguments: dict[str, Any] | None = None) -> Any:
        """One QMP command on the VM's session."""
        self._require(Runstate.RUNNING)
        if self._session is None:
            raise StateError(self.name, self.runstate, (Runstate.RUNNING,))
        return await self._session.execute(cmd, arguments)

    async def with_client(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``work`` with the session's raw ``qemu.qmp`` client (for what needs more than
        commands, e.g. passing a file descriptor); the session stays the VM's."""
        self._require(Runstate.RUNNING)
        if self._session is None:
            raise StateError(self.name, self.runstate, (Runstate.RUNNING,))
        return await work(self._session.client)

    async def status(self) -> str:
        """QEMU's run status: "running", "paused", …"""
        return str((await self.command("query-status")).get("status"))

    # -- the guest agent ------------------------------------------------------------------

    async def wait_ready(self, timeout: float) -> None:
        """Until the guest agent answers; BootTimeout or OperationFailed with the console's tail."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.runstate not in (Runstate.RUNNING, Runstate.STARTING):
                raise OperationFailed(
                    f"QEMU of VM '{self.name}' {self.ended} while the guest booted; the console "
                    f"said:\n{serial.tail(self.paths.serial_log) or '(empty)'}",
                    hint="check the image and the kernel arguments")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BootTimeout(
                    f"VM '{self.name}' did not answer its guest agent within {timeout:g}s; "
                    f"the console said:\n{serial.tail(self.paths.serial_log)}",
                    hint="the image must run qemu-guest-agent; see `virtpool vm logs`")
            try:
                # One connection, its sync sent again each second: the agent's first answer
                # ends the wait, whether the guest is still booting or just slow. The
                # connection is kept for what comes next.
                await self.guest_agent.connect(deadline=min(remaining, SYNC_DEADLINE_S))
                self.ready = True
                return
            except (GuestAgentError, StateError):
                await asyncio.sleep(READY_POLL_S)

    async def exec(self, argv: list[str], timeout: float, stdin: bytes | Callable[[], bytes | None] | None,
                   emit: Callable[[ExecOutput], None] | None = None) -> ExecResult:
        """Run a command in the guest; with ``emit``, its output goes there as it is written,
        and ``stdin`` may be taken while it runs (GuestAgent.exec_stream). Other commands
        (execs, a stop) run alongside: they share the guest agent request by request."""
        agent = GuestAgent(self.guest_agent)
        try:
            if emit is not None:
                return await agent.exec_stream(argv, timeout=timeout, stdin=stdin, emit=emit)
            return await agent.exec(argv, timeout=timeout, stdin=stdin if isinstance(stdin, bytes) else None)
        except GuestAgentError as err:
            # The channel broke, or the guest went down under the command: when QEMU went
            # away meanwhile, that is the VM stopping, not a fault of the command (the watcher
            # records the exit itself).
            if (isinstance(err, GuestAgentGone) or self.stopping) and await self.wait_gone(2.0):
                raise Conflict(f"VM '{self.name}' stopped while the command ran: its QEMU exited",
                               hint=f"start it again (virtpool vm start {self.name}) and retry") from err
            raise

    async def take_identity(self, name: str) -> None:
        """After a start from a memory snapshot of another VM: its guest still believes it is
        that VM, at that VM's time. Give it its hostname, then the clock of now, through its
        agent (model/guest_identity.py). Returns once the hostname is written; the clock is
        set just after, with the agent's channel held until then: any command through the
        agent (an exec, a stop) runs after it. (Its NIC's MAC is in the device state QEMU
        restored and stays the snapshot's; see the README.)"""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._clock_task = asyncio.get_running_loop().create_task(self._retake_identity(name, written))
        await written

    async def _retake_identity(self, name: str, written: asyncio.Future[None]) -> None:
        """The hostname, then (``written`` told) the clock, on the agent's channel held."""
        try:
            async with GuestAgent.exclusive(self.guest_agent) as agent:
                for path in HOSTNAME_FILES:
                    await agent.write_file(path, f"{name}\n".encode())
                written.set_result(None)
                # Polled closely: the guest's first process after a restore, short but slow to start.
                done = await agent.exec(clock_argv(time.time()), timeout=30, poll=IDENTITY_POLL_S)
                if done.exit_code != 0:
                    log.warning("VM %s kept the clock of its snapshot: %s", name, done.stderr.strip())
        except (GuestAgentError, StateError) as err:
            log.warning("VM %s kept the %s of its snapshot: %s", name,
                        "clock" if written.done() else "identity", err.message)
        except BaseException:
            if not written.done():
                written.cancel()
            raise
        finally:
            if not written.done():
                written.set_result(None)

    async def guest_interfaces(self, answer_within: float = 1.0) -> Any:
        """The guest agent's ``guest-network-get-interfaces`` reply, or None when the agent is
        not up yet, or does not answer within ``answer_within`` seconds (it may be held by a
        freeze)."""
        if not self.ready or self.runstate != Runstate.RUNNING:
            return None
        try:
            return await asyncio.wait_for(self.guest_agent.call("guest-network-get-interfaces"), answer_within)
        except (GuestAgentError, StateError, TimeoutError):
            return None

    async def ask_agent_to_stop(self) -> None:
        """Ask the guest's agent to power off; raises GuestAgentError when there is no agent,
        it refused, or it does not take the request in time."""
        self.stopping = True  # a guest reset on the way down is no reboot to carry out
        if await self.status() == "paused":
            await self.command("cont")
        try:
            await asyncio.wait_for(GuestAgent(self.guest_agent).shutdown(), STOP_AGENT_WAIT_S)
        except TimeoutError:
            raise GuestAgentError(f"the guest agent of VM '{self.name}' did not take the request to shut down "
                                  f"within {STOP_AGENT_WAIT_S:g}s",
                                  hint="the stop goes on with the ACPI power button") from None

    async def press_power_button(self) -> None:
        """ACPI power button, which a guest may or may not heed."""
        self.stopping = True
        try:
            await self.command("system_powerdown")
        except (OperationFailed, StateError):
            pass  # QEMU went away meanwhile: the caller's wait says so

    # -- ending ---------------------------------------------------------------------------

    async def until_idle(self, timeout: float) -> None:
        """Before a start: a QEMU on its way out (its watcher still tidying up after it) is
        waited for, up to ``timeout``; the start's own state check then says if it stayed."""
        if self.runstate == Runstate.STOPPING:
            await self.wait_gone(timeout)

    async def wait_gone(self, timeout: float) -> bool:
        """Until the watcher has seen QEMU exit (True), or ``timeout`` passes (False)."""
        if self.runstate == Runstate.IDLE:
            return True
        try:
            await asyncio.wait_for(self._gone.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def kill(self) -> None:
        """QMP 'quit', then SIGKILL after a grace period; returns once QEMU is gone and its
        watcher has tidied up after it (OperationFailed if it is not, in KILLED_EXIT_S)."""
        if self.runstate == Runstate.IDLE:
            return
        self.stopping = True
        self.runstate = Runstate.STOPPING
        if self._session is not None and self._session.connected:
            try:
                await self._session.execute("quit")
            except OperationFailed:
                pass
        if not await self.wait_gone(HARD_STOP_GRACE_S):
            proc = self._proc
            if proc is not None:
                await asyncio.to_thread(process.kill, proc)
            if not await self.wait_gone(KILLED_EXIT_S):
                raise OperationFailed(f"QEMU of VM '{self.name}' is still {self.runstate.value} "
                                      f"{KILLED_EXIT_S:g}s after SIGKILL",
                                      hint="look for its process (ps) and the agent's log; "
                                      "stop the VM again once it has gone")

    async def detach(self) -> None:
        """Stop watching (the agent is closing); QEMU keeps running."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self._stop_console(drain=False)
        self._close_agent()
        if self._session is not None:
            await self._session.close()
        self._session = None
        self._end()

    def _close_agent(self) -> None:
        """QEMU is gone (or no longer ours): whoever waits on its guest agent is told so."""
        agent, self._agent = self._agent, None
        if agent is not None:
            agent.close()

    async def _watch(self) -> None:
        session, proc = self._session, self._proc
        if session is None or proc is None:
            return
        try:
            async for name, data in session.events():
                try:
                    self._on_event(name, data)
                except Exception:  # e.g. the feed's disk refused it: the watch goes on
                    log.exception("event %s of VM %s was not recorded", name, self.name)
        except OperationFailed:
            pass
        # The session ended: QEMU exited (or is exiting; see process.wait_gone for why not the
        # pidfile). A session lost while QEMU lives on would be a bug of ours: kill, not guess.
        if not await asyncio.to_thread(process.wait_gone, proc, 5.0):
            log.error("QMP session of VM %s ended while its QEMU runs; killing it", self.name)
            await asyncio.to_thread(process.kill, proc)
        self._close_agent()
        await self._kill_and_reap()
        await self._stop_console(drain=True)
        await session.close()
        self._session = None
        await self._on_gone(self)
        self.runstate = Runstate.IDLE
        if self._reset and self.ready and not self.stopping and self._reboot is not None:
            try:
                if await self._reboot(self):
                    return  # the VM lives on in a new QEMU: nothing to tell the control plane
            except Exception:  # a failed restart is reported as the exit it then is
                log.exception("VM %s rebooted but could not be started again", self.name)
        self._notify("vm.exited", {"guest_initiated": self._guest_initiated})
        self._gone.set()

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "SHUTDOWN" and data.get("guest"):
            # -no-reboot turns the guest's reboot into an exit with this reason.
            if data.get("reason") == "guest-reset":
                self._reset = True
            else:
                self._guest_initiated = True
                self._notify("vm.powered_off", {"reason": data.get("reason")})
        elif name == "BALLOON_CHANGE":
            now = time.monotonic()
            if now - self._last_balloon_event >= BALLOON_EVENT_EVERY_S:
                self._last_balloon_event = now
                self._notify("vm.balloon", {"actual_mib": round(int(data.get("actual", 0)) / (1 << 20), 1)})
        elif name == "BLOCK_IO_ERROR":
            details = {k: data.get(k) for k in ("device", "node-name", "operation", "action", "reason",
                                                 "nospace")}
            if data.get("action") == "stop":
                # QEMU paused the guest rather than fail its write: said once per pause.
                if not self.io_paused:
                    self.io_paused = True
                    self._notify("vm.io_error", details)
                return
            now = time.monotonic()
            if now - self._last_io_error_event >= IO_ERROR_EVENT_EVERY_S:
                self._last_io_error_event = now
                self._notify("vm.io_error", details)
        elif name == "RESUME" and self.io_paused:
            self.io_paused = False
            self._notify("vm.resumed", {"after": "io_error"})

    async def _kill_and_reap(self) -> None:
        proc, popen = self._proc, self._popen
        if proc is not None and process.alive(proc):
            await asyncio.to_thread(process.kill, proc)
        if popen is not None:
            await asyncio.to_thread(popen.wait)
            self.ended = how_it_ended(popen)
        self._popen = None


def how_it_ended(popen: subprocess.Popen[bytes] | None) -> str:
    """'was killed by signal 9 (SIGKILL)', 'exited with code 1', or 'exited' (not our child)."""
    code = popen.poll() if popen is not None else None
    if code is None:
        return "exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
