"""One guest-agent channel shared by many callers: each reply reaches the caller that asked.

The agent is the host's own qemu-ga (see conftest.py), stopped with SIGSTOP to hold a reply
in flight, killed to break the connection, started again to be reconnected to. The commands
asked differ in the shape of their answer (guest-info a dict with "version", guest-get-time
an int), so that a reply handed to the wrong caller shows.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from tests.faults.conftest import start_qemu_ga, stop_qemu_ga
from virtpool.node.qemu.guest_agent import GuestAgent
from virtpool.node.qemu.qga_channel import GuestAgentChannel, GuestAgentError, GuestAgentGone

NO_HANG_S = 30.0  # bounds every wait below: a call that hangs fails the test instead


async def _held_back(proc: subprocess.Popen[bytes], channel: GuestAgentChannel, *cmds: str) -> list[asyncio.Task[object]]:
    """``cmds`` called at once on ``channel`` while the agent is stopped: the first is sent
    and unanswered, the others wait their turn."""
    proc.send_signal(signal.SIGSTOP)
    tasks = [asyncio.create_task(channel.call(cmd)) for cmd in cmds]
    await asyncio.sleep(0.2)  # lets the first be written to the socket; the agent cannot answer it
    assert not any(task.done() for task in tasks)
    return tasks


async def _cancelled_in_flight(sock: Path, proc: subprocess.Popen[bytes]) -> tuple[object, object, object]:
    channel = GuestAgentChannel(sock, vm="shared")
    try:
        await channel.connect()
        first, second = await _held_back(proc, channel, "guest-info", "guest-get-time")
        first.cancel()  # its caller went away while its reply is in flight
        proc.send_signal(signal.SIGCONT)
        got_time = await asyncio.wait_for(second, NO_HANG_S)
        info = await asyncio.wait_for(channel.call("guest-info"), NO_HANG_S)
        return first.cancelled(), got_time, info
    finally:
        proc.send_signal(signal.SIGCONT)
        channel.close()


def test_a_caller_cancelled_while_its_reply_is_in_flight_leaves_the_next_reply_to_its_own_caller(
        agent_socket: tuple[Path, subprocess.Popen[bytes]]) -> None:
    cancelled, got_time, info = asyncio.run(_cancelled_in_flight(*agent_socket))
    assert cancelled
    assert isinstance(got_time, int)  # not the cancelled caller's guest-info
    assert isinstance(info, dict) and "version" in info


async def _agent_dies(sock: Path, proc: subprocess.Popen[bytes]) -> tuple[list[object], object]:
    channel = GuestAgentChannel(sock, vm="shared")
    try:
        await channel.connect()
        tasks = await _held_back(proc, channel, "guest-ping", "guest-info", "guest-get-time")
        proc.kill()  # still stopped, as QEMU killed: the connection breaks with a request in flight
        proc.wait()
        failed = list(await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), NO_HANG_S))
        again = start_qemu_ga(sock.parent)  # the agent back on the same socket
        try:
            pong = await asyncio.wait_for(channel.call("guest-ping"), NO_HANG_S)
        finally:
            stop_qemu_ga(again)
        return failed, pong
    finally:
        channel.close()


def test_an_agent_that_goes_away_fails_every_waiting_call_and_the_next_call_reconnects(
        agent_socket: tuple[Path, subprocess.Popen[bytes]]) -> None:
    failed, pong = asyncio.run(_agent_dies(*agent_socket))
    assert [type(err) for err in failed] == [GuestAgentGone] * 3, failed
    assert pong == {}  # connected again and synchronized on the same channel


async def _closed_under_callers(sock: Path, proc: subprocess.Popen[bytes]) -> tuple[list[object], object]:
    channel = GuestAgentChannel(sock, vm="shared")
    try:
        await channel.connect()
        tasks = await _held_back(proc, channel, "guest-ping", "guest-info")
        channel.close()  # what the VM does when its QEMU exits
        failed = list(await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), NO_HANG_S))
        later = await asyncio.gather(channel.call("guest-ping"), return_exceptions=True)
        return failed, later[0]
    finally:
        proc.send_signal(signal.SIGCONT)


def test_a_closed_channel_fails_the_call_in_flight_the_waiting_ones_and_all_later_ones(
        agent_socket: tuple[Path, subprocess.Popen[bytes]]) -> None:
    failed, later = asyncio.run(_closed_under_callers(*agent_socket))
    assert [type(err) for err in failed] == [GuestAgentGone] * 2, failed
    assert isinstance(later, GuestAgentGone) and "start the VM again" in (later.hint or "")


async def _late_refusal(sock: Path, proc: subprocess.Popen[bytes]) -> tuple[None, object, str]:
    channel = GuestAgentChannel(sock, vm="shared")
    try:
        await channel.connect()
        proc.send_signal(signal.SIGSTOP)
        # No answer in time is a shutdown taken; this agent refuses it (blocked), but late.
        taken = await asyncio.wait_for(GuestAgent(channel).shutdown(answer_within=0.5), NO_HANG_S)
        proc.send_signal(signal.SIGCONT)
        got_time = await asyncio.wait_for(channel.call("guest-get-time"), NO_HANG_S)
        with pytest.raises(GuestAgentError) as refused:  # a refusal in time is said
            await asyncio.wait_for(GuestAgent(channel).shutdown(answer_within=NO_HANG_S), NO_HANG_S)
        return taken, got_time, refused.value.message
    finally:
        proc.send_signal(signal.SIGCONT)
        channel.close()


def test_a_late_refusal_of_a_shutdown_reaches_nobody_else(agent_socket: tuple[Path, subprocess.Popen[bytes]]) -> None:
    taken, got_time, refused = asyncio.run(_late_refusal(*agent_socket))
    assert taken is None
    assert isinstance(got_time, int)  # not the refusal that came after the shutdown's wait
    assert "refused to shut down" in refused and "disabled" in refused, refused


async def _set_back(sock: Path, proc: subprocess.Popen[bytes]) -> tuple[object, bool, object, object]:
    channel = GuestAgentChannel(sock, vm="shared")
    try:
        await channel.connect()
        first = await _held_back(proc, channel, "guest-info")
        restore = asyncio.create_task(_restore_under(channel))
        await asyncio.sleep(0.2)
        waited = not restore.done()  # the restore waits for the reply in flight
        proc.send_signal(signal.SIGCONT)
        info = await asyncio.wait_for(first[0], NO_HANG_S)
        await asyncio.wait_for(restore, NO_HANG_S)
        got_time = await asyncio.wait_for(channel.call("guest-get-time"), NO_HANG_S)
        return info, waited, got_time, await asyncio.wait_for(channel.call("guest-ping"), NO_HANG_S)
    finally:
        proc.send_signal(signal.SIGCONT)
        channel.close()


async def _restore_under(channel: GuestAgentChannel) -> None:
    async with channel.set_back():
        # What a guest agent set back by a snapshot restore does: it says again what it said
        # before (here the answer to a guest-info that no caller of this channel asked now).
        conn = channel._conn  # noqa: SLF001 - the words come from the agent's side of the wire
        assert conn is not None
        await conn.send({"execute": "guest-info"})
        await asyncio.sleep(0.2)  # its answer is on its way


def test_after_a_snapshot_restore_the_next_call_reads_its_own_reply(
        agent_socket: tuple[Path, subprocess.Popen[bytes]]) -> None:
    info, waited, got_time, pong = asyncio.run(_set_back(*agent_socket))
    assert isinstance(info, dict) and "version" in info  # the call in flight got its own reply
    assert waited
    assert isinstance(got_time, int), got_time  # not the guest-info said again
    assert pong == {}
