"""A guest agent that answers late is waited for, within a bound.

The agent is the host's own qemu-ga, the program the guests run, listening on a Unix socket as
an unprivileged user with its commands that act (exec, files, shutdown) blocked. It is stopped
with SIGSTOP for longer than one sync attempt (1 s), as a guest on a loaded host stalls: the
client's sync, sent again on the same connection, is answered once it runs again. A guest agent
that never answers is given up on at the deadline.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import pytest

from virtpool.node.qemu.guest_agent import GuestAgent, GuestAgentError

async def _ping_while_stalled(sock: Path, proc: subprocess.Popen[bytes], stall_s: float,
                              deadline: float) -> object:
    loop = asyncio.get_running_loop()
    proc.send_signal(signal.SIGSTOP)
    resume = loop.call_later(stall_s, proc.send_signal, signal.SIGCONT)
    try:
        async with await GuestAgent.open(sock, vm="slow", deadline=deadline) as agent:
            return await agent.call("guest-ping")
    finally:
        resume.cancel()
        proc.send_signal(signal.SIGCONT)


def test_a_guest_agent_stalled_past_one_sync_attempt_is_waited_for(agent_socket: tuple[Path, subprocess.Popen[bytes]]) -> None:
    sock, proc = agent_socket
    started = time.monotonic()
    assert asyncio.run(_ping_while_stalled(sock, proc, stall_s=2.5, deadline=20.0)) == {}
    assert time.monotonic() - started >= 2.5  # it did answer only after the stall
    # The next conversation is clean: the late answers to the first syncs were skipped.
    assert asyncio.run(_ping_while_stalled(sock, proc, stall_s=0.0, deadline=5.0)) == {}


def test_a_guest_agent_that_never_answers_is_given_up_on_at_the_deadline(agent_socket: tuple[Path, subprocess.Popen[bytes]]) -> None:
    sock, proc = agent_socket
    with pytest.raises(GuestAgentError, match="does not answer"):
        asyncio.run(_ping_while_stalled(sock, proc, stall_s=60.0, deadline=2.5))
