"""The QEMU process of one VM: spawn it detached, find it again, make sure it is gone.

QEMU runs in a session of its own with its stdio on a file, so it outlives the agent that
started it; a restarted agent finds it through its pidfile (``-pidfile``) and checks that the
pid really is that VM's QEMU before trusting it (pids are reused).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from virtpool.model.errors import OperationFailed
from virtpool.node import safe_files


def spawn(argv: list[str], log: Path, *, vm: str, **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """Start QEMU detached (own session, stdio to ``log``) and return at once.

    ``popen_kwargs`` carries the user, group and umask to run it as. Whether it came up is for
    the caller to see (its monitor answers, or it exits and ``log`` says why).
    """
    try:
        # Created anew without following links: the run dir belongs to the VM's user.
        with os.fdopen(safe_files.create_new(log), "ab") as errors:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=errors, stderr=errors,
                start_new_session=True, **popen_kwargs,
            )
    except FileNotFoundError as err:
        raise OperationFailed(
            f"cannot start VM '{vm}': {argv[0]} is not installed",
            hint="run scripts/install-system-packages.sh as root",
        ) from err


def read_pid(pidfile: Path) -> int | None:
    """The pid in QEMU's pidfile, or None. The file is in the VM user's run dir: it may be a
    FIFO, a symlink or huge, and is then ignored (never blocked on, never followed)."""
    try:
        return int(safe_files.read_small(pidfile, safe_files.PIDFILE_MAX_BYTES).strip())
    except (OSError, ValueError, safe_files.UnsafeFile):
        return None


def find(pidfile: Path) -> psutil.Process | None:
    """The live QEMU process that owns ``pidfile``, or None.

    A pid alone is not proof: after a reboot or a long stop it may belong to anything. The
    process must be QEMU and its command line must name this very pidfile.
    """
    pid = read_pid(pidfile)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if str(pidfile) not in cmdline or not any("qemu-system" in part for part in cmdline[:1]):
        return None
    return proc


def scan(pidfile: Path) -> psutil.Process | None:
    """The live QEMU whose command line names ``pidfile``, found without reading the file.

    For when the pidfile cannot be trusted (it lives in the VM user's run dir and may have been
    replaced by a FIFO, a link or garbage): a QEMU that still runs must still be found, or it
    would be left running with no record of it.
    """
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and "qemu-system" in cmdline[0] and str(pidfile) in cmdline:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    return proc
            except psutil.NoSuchProcess:
                continue
    return None


def alive(proc: psutil.Process) -> bool:
    """True while ``proc`` (that very process, not a reuse of its pid) has not exited."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill(proc: psutil.Process, *, timeout: float = 5.0) -> None:
    """SIGKILL the process and wait until it is gone."""
    if not alive(proc):
        return
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired as err:
        raise OperationFailed(f"QEMU process {proc.pid} survived SIGKILL for {timeout}s") from err


def wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait until the process has exited; True if it did within ``timeout``.

    Waits on the process, not the pidfile: QEMU removes its pidfile before it has finished
    exiting (and before its disk is closed).
    """
    deadline = time.monotonic() + timeout
    while alive(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def remove_stale_files(paths: list[Path]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
