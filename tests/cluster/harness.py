"""Several hosts on one machine: one network namespace per host, joined by veth pairs to a bridge
in the root namespace, each host's processes in its own namespace (and UTS namespace, so that
its hostname is its own) with its own data dir and address.

    root ns:  clXXbr0 10.235.N.1/24 ── clXXv1 ═ clXXp1 (ns clXX-h1, 10.235.N.11)
                                    ── clXXv2 ═ clXXp2 (ns clXX-h2, 10.235.N.12)
                                    ── clXXv3 ═ clXXp3 (ns clXX-h3, 10.235.N.13)

Everything is named with a prefix of the run's own (``cl`` and two characters, claimed in
/run/virtpool-cluster-labs) on a /24 no interface uses, so that other runs on the same machine
(another engineer's, CI, another pytest-xdist worker) never collide with it. ``Lab.teardown`` kills every process it started (and anything
still running from its root dir), deletes the namespaces, veths and bridge, removes its files,
and ``Lab.leftovers`` counts what would be left: the tests assert it is all zero.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil



LABS = Path("/run/virtpool-cluster-labs")  # <prefix> -> the pid of the run that owns it


def _claim_prefix_and_subnets() -> tuple[str, str, str]:
    """A name prefix and two /24s of this run's own: ``cl`` and two characters from the pid, and
    subnets of 10.235.0.0/16 that no interface of this machine uses. Every run (two CI runs, an
    engineer's run beside the lead's, pytest-xdist workers) gets its own lab; a lab whose run
    was killed is removed by the next run's ``setup`` (``sweep_dead_labs``)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    pid = os.getpid()
    LABS.mkdir(mode=0o700, parents=True, exist_ok=True)
    for attempt in range(len(alphabet) ** 2):
        n = (pid + attempt) % len(alphabet) ** 2
        prefix = f"cl{alphabet[n // len(alphabet)]}{alphabet[n % len(alphabet)]}"
        try:
            fd = os.open(LABS / prefix, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as out:
            out.write(f"{pid}\n")
        break
    else:
        raise RuntimeError(f"every lab prefix is taken; see {LABS}")
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                          check=True).stdout
    free = [f"10.235.{k}" for k in range(1, 255) if f" 10.235.{k}." not in used]
    first = (pid * 2) % (len(free) - 1)
    return prefix, free[first], free[first + 1]


def sweep_dead_labs() -> None:
    """Remove the networks of labs whose run is gone (killed before its teardown)."""
    if not LABS.is_dir():
        return
    for claim in LABS.iterdir():
        try:
            pid = int(claim.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
        if pid and not psutil.pid_exists(pid):
            remove_network(claim.name)
            remove_network(f"{claim.name}t")
            claim.unlink(missing_ok=True)


PREFIX, SUBNET, PROBE_SUBNET = _claim_prefix_and_subnets()
PROBE_PREFIX = f"{PREFIX}t"  # a second, smaller lab beside the first
HOST_NAMES = [f"{PREFIX}-h{i}" for i in (1, 2, 3)]
BRIDGE = f"{PREFIX}br0"
GATEWAY = f"{SUBNET}.1"
NETWORK = f"{SUBNET}.0/24"
UID_CLAIMS = Path("/var/lib/virtpool-uid-ranges")  # node/sandbox/uid_ranges.py


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(("netns", "exec", ns, "ip") if ns else ()), *args]
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


@dataclass
class NetnsHost:
    """One host: its namespace, the two ends of its veth pair and its address."""

    index: int
    root: Path
    prefix: str = PREFIX
    subnet: str = SUBNET

    @property
    def name(self) -> str:
        return f"{self.prefix}-h{self.index}"

    @property
    def veth(self) -> str:  # the bridge's end, in the root namespace
        return f"{self.prefix}v{self.index}"

    @property
    def peer(self) -> str:  # the host's end, in its namespace
        return f"{self.prefix}p{self.index}"

    @property
    def address(self) -> str:
        return f"{self.subnet}.{10 + self.index}"

    @property
    def data_dir(self) -> Path:
        return self.root / self.name

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host: its network namespace, a UTS namespace named for it."""
        return ["ip", "netns", "exec", self.name, "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv]

    def cut(self) -> None:
        """Take the host's link to the bridge down (its processes keep running)."""
        ip("link", "set", self.veth, "down")

    def heal(self) -> None:
        ip("link", "set", self.veth, "up")

    def throttle(self, rate: str) -> None:
        """Make the link towards the host a slow one (``rate``, e.g. "80mbit"), as a WAN is."""
        subprocess.run(["tc", "qdisc", "replace", "dev", self.veth, "root", "tbf", "rate", rate,
                        "burst", "256kb", "latency", "400ms"], check=True, capture_output=True)

    def unthrottle(self) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.veth, "root"], capture_output=True)


@dataclass
class Lab:
    """The bridge and ``count`` hosts; processes started through it die with it."""

    count: int = 3
    prefix: str = PREFIX  # another prefix and subnet make a second lab beside the first
    subnet: str = SUBNET
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix=f"{PREFIX}-cluster-")))
    hosts: list[NetnsHost] = field(init=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # VM users pass through to their run dirs (mkdtemp makes 0700).
        os.chmod(self.root, 0o711)
        self.hosts = [NetnsHost(i, self.root, self.prefix, self.subnet)
                      for i in range(1, self.count + 1)]

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br0"

    # -- building ---------------------------------------------------------------------------

    def setup(self) -> Lab:
        sweep_dead_labs()  # what runs killed before their teardown left
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for host in self.hosts:
            ip("netns", "add", host.name)
            ip("link", "add", host.veth, "type", "veth", "peer", "name", host.peer)
            ip("link", "set", host.peer, "netns", host.name)
            ip("link", "set", host.veth, "master", self.bridge, "up")
            ip("addr", "add", f"{host.address}/24", "dev", host.peer, ns=host.name)
            ip("link", "set", host.peer, "up", ns=host.name)
            ip("link", "set", "lo", "up", ns=host.name)
            # A default route, as a real host has (passt, the VMs' network, needs one); the
            # root namespace forwards nothing, so it leads nowhere beyond the bridge.
            ip("route", "add", "default", "via", f"{self.subnet}.1", ns=host.name)
            host.data_dir.mkdir(mode=0o711)
        return self

    def start(self, argv: list[str], log: Path, host: NetnsHost | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` (inside ``host`` if given), in a session of its own, logging to ``log``."""
        with log.open("ab") as out:
            proc = subprocess.Popen(host.argv(argv) if host else argv, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    # -- tearing down -----------------------------------------------------------------------

    def teardown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                _kill_group(proc.pid)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for proc in self.stray_processes():
            proc.kill()
        psutil.wait_procs(self.stray_processes(), timeout=10)
        remove_network(self.prefix)
        self._forget_uid_claims()
        shutil.rmtree(self.root, ignore_errors=True)
        if self.prefix == PREFIX:
            (LABS / PREFIX).unlink(missing_ok=True)

    def _forget_uid_claims(self) -> None:
        """Our data dirs' uid-range claims: records of dirs that are about to be gone."""
        if not UID_CLAIMS.is_dir():
            return
        for claim in UID_CLAIMS.glob("*.claim"):
            try:
                owner = claim.read_text().strip()
            except OSError:
                continue
            if owner.startswith(str(self.root.resolve()) + "/"):
                claim.unlink(missing_ok=True)

    def stray_processes(self) -> list[psutil.Process]:
        """Processes whose command line points into the lab's root dir (QEMU, virtpool)."""
        found = []
        marker = str(self.root)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(marker in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
        return found

    def leftovers(self) -> dict[str, list[str]]:
        """What the lab would leave behind: every list must be empty after teardown."""
        return {
            "namespaces": namespaces(self.prefix),
            "links": links(self.prefix),
            "processes": [str(p.pid) for p in self.stray_processes()]
                         + [str(p.pid) for p in self.procs if p.poll() is None],
            "files": [str(self.root)] if self.root.exists() else [],
        }


def namespaces(prefix: str = PREFIX) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listed.stdout.splitlines()
            if line.startswith(f"{prefix}-h")]


def links(prefix: str = PREFIX) -> list[str]:
    """The lab's bridge and the bridge's ends of its veth pairs, in the root namespace."""
    listed = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    names = [line.split(":")[1].strip().split("@")[0] for line in listed.stdout.splitlines()]
    veth = f"{prefix}v"
    return [n for n in names
            if n == f"{prefix}br0" or (n.startswith(veth) and n[len(veth):].isdigit())]


def remove_network(prefix: str = PREFIX) -> None:
    """Delete the namespaces (their veth ends go with them, and so the bridge's), then the bridge."""
    for ns in namespaces(prefix):
        ip("netns", "del", ns, check=False)
    for link in links(prefix):
        ip("link", "del", link, check=False)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
