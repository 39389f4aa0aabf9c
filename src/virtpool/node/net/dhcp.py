"""dnsmasq per network on this host: DHCP with static leases only, no DNS.

One dnsmasq per bridge, bound to that bridge alone. It hands out exactly the (MAC, address)
pairs of the control plane's IPAM (``--dhcp-range ...,static``): a guest with another MAC gets
nothing. Changes to the leases reach it by SIGHUP (it re-reads its hosts file). Its files live
in the agent's network state dir, the hosts file readable by the unprivileged user dnsmasq
drops to after binding.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
from pathlib import Path

import psutil

from virtpool.model.errors import OperationFailed
from virtpool.node.net.plan import BridgePlan, dnsmasq_hosts

START_TIMEOUT_S = 15.0


def dnsmasq_argv(bridge: BridgePlan, state_dir: Path) -> list[str]:
    """Pure: dnsmasq's argv for one bridge."""
    network = ipaddress.IPv4Network(bridge.subnet)
    gateway = bridge.gateway.split("/")[0]
    argv = [
        "dnsmasq", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--port=0",  # no DNS: only DHCP
        f"--interface={bridge.name}", "--bind-interfaces", "--except-interface=lo",
        f"--dhcp-range={network.network_address},static,{network.netmask},infinite",
        f"--dhcp-hostsfile={hosts_file(bridge, state_dir)}",
        "--dhcp-authoritative", "--leasefile-ro",
        f"--pid-file={pidfile(bridge, state_dir)}",
        "--user=nobody", "--group=nogroup",
        f"--dhcp-option=option:mtu,{bridge.mtu}",
        "--dhcp-option=option:dns-server",  # none: the network has no DNS of its own
    ]
    # A default route only where the host forwards (NAT); elsewhere the subnet is all there is.
    argv.append(f"--dhcp-option=option:router,{gateway}" if bridge.nat
                else "--dhcp-option=option:router")
    return argv


def hosts_file(bridge: BridgePlan, state_dir: Path) -> Path:
    return state_dir / f"{bridge.name}.hosts"


def pidfile(bridge: BridgePlan, state_dir: Path) -> Path:
    return state_dir / f"{bridge.name}.dnsmasq.pid"


def running(pid_path: Path) -> psutil.Process | None:
    """The dnsmasq that wrote ``pid_path`` (its command line names it), or None."""
    try:
        proc = psutil.Process(int(pid_path.read_text().strip()))
        if any(str(pid_path) in arg for arg in proc.cmdline()):
            return proc
    except (OSError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def converge(bridge: BridgePlan, state_dir: Path, netns: str | None = None) -> str | None:
    """dnsmasq runs on ``bridge`` with its settings and hands out exactly its leases. What it
    did: "start", "restart" (its settings changed), "reload" (its leases changed) or None."""
    hosts = hosts_file(bridge, state_dir)
    content = dnsmasq_hosts(bridge)
    changed = not hosts.exists() or hosts.read_text() != content
    if changed:
        tmp = hosts.with_suffix(".tmp")
        tmp.write_text(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, hosts)
    argv = dnsmasq_argv(bridge, state_dir)
    proc = running(pidfile(bridge, state_dir))
    if proc is not None:
        if _cmdline(proc) == argv:
            if changed:
                proc.send_signal(signal.SIGHUP)
                return "reload"
            return None
        _stop(proc)
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=START_TIMEOUT_S)
    except FileNotFoundError as err:
        raise OperationFailed("dnsmasq is not installed",
                              hint="run scripts/install-system-packages.sh as root") from err
    if done.returncode != 0:
        raise OperationFailed(f"dnsmasq refused to serve {bridge.name}: {done.stderr.strip()}")
    return "start" if proc is None else "restart"


def _cmdline(proc: psutil.Process) -> list[str] | None:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _stop(proc: psutil.Process) -> None:
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.NoSuchProcess:
        pass


def stop_all_except(keep: set[str], state_dir: Path) -> list[str]:
    """Stop the dnsmasq of every bridge not in ``keep`` and remove its files; the bridges
    whose dnsmasq was stopped."""
    stopped = []
    for pid_path in sorted(state_dir.glob("*.dnsmasq.pid")):
        name = pid_path.name.removesuffix(".dnsmasq.pid")
        if name in keep:
            continue
        proc = running(pid_path)
        if proc is not None:
            _stop(proc)
            stopped.append(name)
        for path in (pid_path, state_dir / f"{name}.hosts"):
            path.unlink(missing_ok=True)
    return stopped
