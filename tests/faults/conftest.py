"""The host's own qemu-ga (the program the guests run) as a guest agent on a Unix socket,
listening as an unprivileged user with its commands that act (exec, files, shutdown) blocked."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for

QEMU_GA = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
BLOCKED = ("guest-exec,guest-exec-status,guest-file-open,guest-file-write,guest-file-read,"
           "guest-file-close,guest-shutdown,guest-suspend-disk,guest-suspend-ram,guest-suspend-hybrid,"
           "guest-set-time,guest-set-user-password,guest-ssh-add-authorized-keys,"
           "guest-ssh-remove-authorized-keys,guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,"
           "guest-fstrim,guest-set-vcpus,guest-set-memory-blocks")
NOBODY = 65534


def start_qemu_ga(run_dir: Path) -> subprocess.Popen[bytes]:
    """qemu-ga listening on ``run_dir``/qga.sock (made anew), once the socket is there."""
    sock = run_dir / "qga.sock"
    sock.unlink(missing_ok=True)
    as_nobody: dict[str, object] = {}
    if os.geteuid() == 0:  # the socket's directory belongs to its peer, as a VM's run dir does
        os.chown(run_dir, NOBODY, NOBODY)
        as_nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    proc = subprocess.Popen([QEMU_GA, "-m", "unix-listen", "-p", str(sock), "-f", str(run_dir / "qga.pid"),
                             "-t", str(run_dir), "-b", BLOCKED], stderr=subprocess.DEVNULL,
                            **as_nobody)  # type: ignore[call-overload]
    assert wait_for(sock.exists, 10), "qemu-ga made no socket"
    return proc


def stop_qemu_ga(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.wait()


@pytest.fixture
def agent_socket() -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    if not Path(QEMU_GA).exists():
        pytest.fail("qemu-ga is not installed on this host (apt-get install qemu-guest-agent)")
    run_dir = Path(tempfile.mkdtemp(prefix="gq-qga-", dir="/tmp"))
    proc = start_qemu_ga(run_dir)
    try:
        yield run_dir / "qga.sock", proc
    finally:
        stop_qemu_ga(proc)
        shutil.rmtree(run_dir, ignore_errors=True)
