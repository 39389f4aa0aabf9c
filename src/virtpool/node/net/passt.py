"""The default network of a VM: passt, a user-mode NAT that does not open the host.

QEMU's own user-mode network (``-netdev user``) maps 10.0.2.2 to the host's loopback, so every
guest could reach every service on it. passt runs as the VM's user next to its QEMU, which
reaches it through ``-netdev stream`` on a unix socket in the VM's private run dir. With
``--no-map-gw`` the gateway address is no longer the host; the host guard (``guard.py``) drops
whatever the VM's user would still send to one of the host's own addresses. The guest keeps
the addresses it had under QEMU's user mode (10.0.2.15, gateway 10.0.2.2, DNS 10.0.2.3), and
``--port`` forwards become passt's ``-t 127.0.0.1/HOST:GUEST``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil

from virtpool.model.errors import OperationFailed
from virtpool.model.spec import PortForward
from virtpool.node import safe_files

GUEST_ADDRESS = "10.0.2.15"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
PREFIX_LEN = 24
START_TIMEOUT_S = 15.0


def passt_argv(socket: Path, pidfile: Path, log: Path, ports: tuple[PortForward, ...]) -> list[str]:
    """Pure: passt's argv for one VM's default network."""
    argv = [
        "passt", "--socket", str(socket), "--pid", str(pidfile), "--log-file", str(log),
        "--quiet",
        "--one-off",  # it exits when its QEMU goes: nothing to clean up after a VM
        "--no-map-gw",
        "--ipv4-only",
        "--address", GUEST_ADDRESS, "--netmask", str(PREFIX_LEN), "--gateway", GATEWAY,
        "--dns-forward", DNS,
    ]
    if ports:
        # Bound to loopback only: exposing a guest port beyond the host is a deliberate act.
        argv += ["--tcp-ports", ",".join(f"127.0.0.1/{p.host}:{p.guest}" for p in ports)]
    return argv


def start(argv: list[str], *, vm: str, cwd: Path, **run_as: Any) -> None:
    """Run passt in ``cwd`` (the VM's run dir, where a relative ``--socket`` is bound); it
    returns once its socket is bound and it has gone to the background."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=START_TIMEOUT_S, cwd=cwd, **run_as)
    except FileNotFoundError as err:
        raise OperationFailed(f"cannot start the network of VM '{vm}': passt is not installed",
                              hint="run scripts/install-system-packages.sh as root") from err
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise OperationFailed(
            f"passt refused to start the network of VM '{vm}': {said[-1] if said else done.returncode}",
            hint="a --port forward's host port may be taken: pick another")


def find(pidfile: Path) -> psutil.Process | None:
    """The live passt that wrote ``pidfile`` (its command line names it), or None."""
    try:
        # In the VM user's run dir: read as a plain file only (never a FIFO or a link).
        proc = psutil.Process(int(safe_files.read_small(pidfile, safe_files.PIDFILE_MAX_BYTES).strip()))
        if str(pidfile) in proc.cmdline() and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (OSError, ValueError, safe_files.UnsafeFile, psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def stop(pidfile: Path) -> None:
    """Kill the VM's passt if it still runs (it normally exits with its QEMU)."""
    proc = find(pidfile)
    if proc is None:
        return
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
    except psutil.NoSuchProcess:
        pass
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass
