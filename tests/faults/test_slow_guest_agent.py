"""A guest agent that answers late is waited for, within a bound.

The agent is the host's own qemu-ga, the program the guests run, listening on a Unix socket as
an unprivileged user with its commands that act (exec, files, shutdown) blocked. It is stopped
with SIGSTOP for longer than one sync attempt (1 s), as a guest on a loaded host stalls: the
client's sync, sent again on the same connection, is answered once it runs again. A guest agent
that never answers is given up on at the deadline.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from virtpool.node.qemu.guest_agent import GuestAgent, GuestAgentError

QEMU_GA = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
BLOCKED = ("guest-exec,guest-exec-status,guest-file-open,guest-file-write,guest-file-read,"
           "guest-file-close,guest-shutdown,guest-suspend-disk,guest-suspend-ram,guest-suspend-hybrid,"
           "guest-set-time,guest-set-user-password,guest-ssh-add-authorized-keys,"
           "guest-ssh-remove-authorized-keys,guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,"
           "guest-fstrim,guest-set-vcpus,guest-set-memory-blocks")
NOBODY = 65534


@pytest.fixture
def agent_socket() -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    if not Path(QEMU_GA).exists():
        pytest.fail("qemu-ga is not installed on this host (apt-get install qemu-guest-agent)")
    run_dir = Path(tempfile.mkdtemp(prefix="gq-qga-", dir="/tmp"))
    sock = run_dir / "qga.sock"
    as_nobody: dict[str, object] = {}
    if os.geteuid() == 0:  # the socket's directory belongs to its peer, as a VM's run dir does
        os.chown(run_dir, NOBODY, NOBODY)
        as_nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    proc = subprocess.Popen([QEMU_GA, "-m", "unix-listen", "-p", str(sock), "-f", str(run_dir / "qga.pid"),
                             "-t", str(run_dir), "-b", BLOCKED], stderr=subprocess.DEVNULL,
                            **as_nobody)  # type: ignore[call-overload]
    try:
        assert wait_for(sock.exists, 10), "qemu-ga made no socket"
        yield sock, proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


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
