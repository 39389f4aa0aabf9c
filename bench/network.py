#!/usr/bin/env python3
"""VM-to-VM network benchmark: TCP throughput (iperf3) and round-trip latency (ping) between two
VMs, through virtpool's networks against bare QEMU on hand-made bridges and taps, in one run.

Five setups, each with two VMs of the default image (1 vCPU, 256 MiB, microvm, the same
``virtio-net-device`` NIC with ``vhost=off``; QEMU's argv from virtpool's own ``build_argv``):

* **virtpool, one host** — `virtpool up`, a network, two VMs on it (bridge, taps opened by the
  agent and passed by fd, nftables anti-spoofing and host rules, MTU 1450).
* **bare, one host** — a bridge and two taps made with ``ip``, QEMU (as root, in a cgroup beside
  virtpool's VMs', with their CPU weight and memory limit) opening its tap
  by name; no nftables, MTU 1500 (what one gets by hand).
* **virtpool, two hosts** — a `virtpool server` and two `virtpool agent`s in network
  namespaces (tests/cluster/harness.py's lab), one VM on each, VXLAN between them pushed by
  the control plane.
* **bare, two hosts** — the same by hand, in a lab of the same topology (two namespaces joined by
  veths to a bridge in the root namespace, the underlay): a bridge, a VXLAN device to the other
  namespace and a tap in each, MTU 1450.
* **user-mode** (reference) — two QEMUs on ``-netdev user``: one forwards a host port to its
  iperf3 server, the other reaches it at 10.0.2.2. Its latency is a ping of slirp's gateway
  (two guests on user-mode networking cannot ping each other).

Latency is measured twice:

* **round trips** (the figure the ratio is made of): ``ping -A`` sends the next echo request as
  soon as the reply is in, ``--trips`` of them back to back; the guest's kernel time before and
  after (``now at`` of ``/proc/timer_list``) divided by the trips is the mean round trip.
  Every guest boots with ``clocksource=tsc tsc=reliable``: left alone, the clocksource watchdog
  of a guest under TCG on a busy host may find the TSC "unstable" against jiffies and fall back
  to ``refined-jiffies``, whose time steps by one tick (HZ=250: 4 ms, high resolution timers
  off); in one run without it, four client guests of five were on jiffies and one on ``tsc``.
  ``guest_clock`` in the JSON says what each setup's client guest had, and
  ``guest_over_host_time`` the guest's time of the round trips over the host's time of the same
  exec (which also holds the exec's own cost): alike across setups when no clock ran slow.
* **ping median** (kept for comparison with earlier runs): the median of ``ping -i 0.2``'s
  single times (on a jiffies clock each a multiple of the tick: the 4.0 ms of earlier runs).

iperf3 is not in the default image: the host's ``/usr/bin/iperf3`` (Debian's ``iperf3``, a
``--test`` system package) and its libraries are copied into each guest before measuring.

The setups compared with each other (virtpool and bare, one host; the same on two hosts) are up
at the same time and measured in turns, round after round with the order rotating, so that the
shared machine's drifting load falls on both alike. Throughput: the median of the rounds' iperf3
runs; latency: the median of the rounds' mean round trips.

Usage: ``.venv/bin/python bench/network.py [--seconds S] [--runs N] [--pings P] [--trips T]``.
Prints a table
on stderr; the last line of stdout is one JSON object::

    {"name": "network", "throughput_ratio": ..., "latency_ratio": ..., ...}

``throughput_ratio`` (virtpool / bare, higher is better) and ``latency_ratio`` (virtpool /
bare, lower is better) are those of one host; the two-host ratios are reported beside them.
Exit status 0 whether or not the targets (>= 0.95, <= 1.05) are met; 1 when a setup fails.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

try:
    import psutil  # noqa: F401 - present only in the repo's venv
except ImportError:  # run as ./bench/network.py by a Python without virtpool: use the repo's venv
    _VENV_PYTHON = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
    if _VENV_PYTHON.exists() and Path(sys.executable) != _VENV_PYTHON:
        os.execv(str(_VENV_PYTHON), [str(_VENV_PYTHON), __file__, *sys.argv[1:]])
    raise

from bench_server import IMAGE, VIRTPOOL, BenchError, Server, kill_qemus_under, link_image, note

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the cluster tests' lab of network namespaces

from tests.cluster.harness import Lab  # noqa: E402

from virtpool.model.errors import OperationFailed  # noqa: E402
from virtpool.node import disks  # noqa: E402
from virtpool.node.agent import MIB, QEMU_OVERHEAD_MIB  # noqa: E402
from virtpool.node.images.build import build_default_image, parse_ldd  # noqa: E402
from virtpool.node.qemu.accel import host_tsc_khz  # noqa: E402
from virtpool.node.qemu.argv import LaunchPlan, NicPlan, build_argv  # noqa: E402
from virtpool.node.qemu.guest_agent import GuestAgent, GuestAgentError  # noqa: E402
from virtpool.node.sandbox import cgroups  # noqa: E402
from virtpool.node.sandbox.cgroups import CPU_WEIGHT_DEFAULT  # noqa: E402
from virtpool.node.vmdir import VMPaths  # noqa: E402
from virtpool.sdk import Client  # noqa: E402

BOOT_TIMEOUT_S = 300.0
MEMORY_MIB = 256
PREFIX = "npz"  # every bridge, tap, namespace and nft table of this benchmark
IPERF_DIR = "/opt/iperf"
IPERF = f"LD_LIBRARY_PATH={IPERF_DIR}/lib {IPERF_DIR}/iperf3"
IPERF_PORT = 5201
CHUNK = 700_000  # bytes of the iperf3 bundle per exec (the API takes 1 MiB of stdin)
SUBNET_ONE, SUBNET_TWO = "10.93.0", "10.94.0"
LAB_SUBNET, BARE_LAB_SUBNET = "10.233.130", "10.233.131"  # virtpool's lab, the bare one's
VNI = 77
# The same clock in every guest, one that does not lose time while the vCPU waits (see above).
CLOCK_ARGS = "clocksource=tsc tsc=reliable"

Sh = Callable[[str, float, bytes | None], tuple[int, str]]  # run a shell script in a guest


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


# -- guests -------------------------------------------------------------------------------------


def pool_sh(client: Client, name: str) -> Sh:
    def sh(script: str, timeout: float = 60, stdin: bytes | None = None) -> tuple[int, str]:
        result = client.exec(name, ["sh", "-c", script], timeout=timeout, stdin=stdin)
        return result.exit_code, result.stdout + result.stderr
    return sh


def bare_sh(sock: Path) -> Sh:
    async def call(script: str, timeout: float, stdin: bytes | None) -> tuple[int, str]:
        agent = await GuestAgent.open(sock, vm="bench")
        async with agent:
            result = await agent.exec(["sh", "-c", script], timeout=timeout, stdin=stdin)
        return result.exit_code, result.stdout + result.stderr

    def sh(script: str, timeout: float = 60, stdin: bytes | None = None) -> tuple[int, str]:
        return asyncio.run(call(script, timeout, stdin))
    return sh


def iperf_bundle() -> bytes:
    """The host's iperf3 and the libraries it needs (but the loader: the guest's is the same)."""
    binary = shutil.which("iperf3")
    if binary is None:
        raise BenchError("iperf3 is not installed: run scripts/install-system-packages.sh --test")
    libraries = [p for p in parse_ldd(run("ldd", binary).stdout) if "ld-linux" not in p]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(binary, arcname="iperf3")
        for library in libraries:
            tar.add(os.path.realpath(library), arcname=f"lib/{Path(library).name}")
    return gzip.compress(buffer.getvalue())


def install_iperf(sh: Sh, bundle: bytes) -> None:
    sh("rm -f /tmp/iperf.tgz", 30, None)
    for start in range(0, len(bundle), CHUNK):
        code, out = sh("cat >>/tmp/iperf.tgz", 60, bundle[start:start + CHUNK])
        if code != 0:
            raise BenchError(f"copying iperf3 into a guest failed: {out}")
    code, out = sh(f"mkdir -p {IPERF_DIR} && tar -xzf /tmp/iperf.tgz -C {IPERF_DIR} && "
                   f"rm /tmp/iperf.tgz && {IPERF} --version", 60, None)
    if code != 0:
        raise BenchError(f"iperf3 does not run in the guest: {out}")


class Pair:
    """Two VMs of one setup, iperf3 installed in both and its server running in ``server``."""

    def __init__(self, made: tuple, bundle: bytes) -> None:  # type: ignore[type-arg]
        self.server, self.client, self.target = made[0], made[1], made[2]
        self.port = made[3] if len(made) > 3 else IPERF_PORT
        # User-mode guests cannot ping each other: slirp's gateway stands in.
        self.ping_target = "10.0.2.2" if len(made) > 3 else self.target
        for sh in (self.server, self.client):
            install_iperf(sh, bundle)
        code, out = self.server(f"{IPERF} -s -D -p {IPERF_PORT}", 30, None)
        if code != 0:
            raise BenchError(f"iperf3 server did not start: {out}")
        self.rates: list[float] = []
        self.rtts: list[float] = []
        self.trip_means: list[float] = []  # ms, one per round
        self.trip_clocks: list[tuple[float, float]] = []  # (guest, host) seconds of each run
        self.clock = guest_clock(self.client)

    def iperf(self, seconds: int) -> float:
        code, out = self.client(f"{IPERF} -c {self.target} -p {self.port} -t {seconds} -J",
                                seconds + 90, None)
        try:
            rate = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
        except (ValueError, KeyError) as err:
            raise BenchError(f"iperf3 to {self.target}:{self.port} failed: {out[-800:]}") from err
        self.rates.append(rate)
        return float(rate)

    def ping(self, count: int) -> None:
        code, out = self.client(f"ping -c {count} -i 0.2 {self.ping_target}", count + 60, None)
        times = [float(t) for t in re.findall(r"time=([0-9.]+) ms", out)]
        if code != 0 or not times:
            raise BenchError(f"ping {self.ping_target} failed: {out[-800:]}")
        self.rtts += times

    def round_trips(self, count: int) -> float:
        """The mean of ``count`` back-to-back round trips, in ms, timed by the guest's kernel
        clock over the whole run (a lost echo would add ping's 1 s wait: the run is repeated)."""
        script = (f"{NOW}; ping -A -q -c {count} {self.ping_target}; {NOW}")
        for _attempt in range(3):
            began = time.monotonic()
            code, out = self.client(script, count * 0.1 + 60, None)
            host_s = time.monotonic() - began
            stamps = [int(n) for n in re.findall(r"now at ([0-9]+) nsecs", out)]
            sent = re.search(r"([0-9]+) packets transmitted, ([0-9]+) packets received", out)
            if code != 0 or len(stamps) != 2 or sent is None:
                raise BenchError(f"ping -A {self.ping_target} failed: {out[-800:]}")
            if int(sent[1]) == int(sent[2]) == count:
                mean = (stamps[1] - stamps[0]) / count / 1e6
                self.trip_means.append(mean)
                self.trip_clocks.append(((stamps[1] - stamps[0]) / 1e9, host_s))
                return mean
            note(f"  {sent[1]} echo requests, {sent[2]} replies: the round trips are run again")
        raise BenchError(f"ping -A {self.ping_target} lost echo replies three times: {out[-800:]}")

    def figures(self) -> dict[str, object]:
        return {"mbit_s": statistics.median(self.rates), "mbit_s_runs": [round(r, 1) for r in self.rates],
                "rtt_ms": round(statistics.median(self.trip_means), 4),
                "rtt_ms_runs": [round(m, 4) for m in self.trip_means],
                "ping_median_ms": round(statistics.median(self.rtts), 3),
                # A tick-driven guest clock that lost ticks under load would run slow: its time
                # over the host's (which also holds the exec's own cost) should stay alike.
                "guest_over_host_time": round(sum(g for g, _ in self.trip_clocks)
                                              / sum(h for _, h in self.trip_clocks), 3),
                "guest_clock": self.clock}


NOW = "grep -m1 'now at' /proc/timer_list"  # the guest kernel's monotonic time, in ns


def guest_clock(sh: Sh) -> dict[str, object]:
    """What the guest's clock is made of: its clocksource, and whether high resolution timers
    are on (off: time reads step by one tick)."""
    base = "/sys/devices/system/clocksource/clocksource0"
    code, out = sh(f"cat {base}/current_clocksource {base}/available_clocksource; "
                   "grep -m1 hres_active /proc/timer_list", 30, None)
    lines = out.split("\n")
    if code != 0 or len(lines) < 3:
        raise BenchError(f"could not read the guest's clocksource: {out}")
    return {"clocksource": lines[0].strip(), "available": lines[1].split(),
            "hres_active": lines[2].split(":")[-1].strip() == "1"}


def interleaved(pairs: dict[str, Pair], args: argparse.Namespace) -> None:
    """Round after round, each setup in turn (the order rotating): a busy machine's load drifts
    over minutes, and this spreads it over all setups alike."""
    names = list(pairs)
    for round_ in range(args.runs):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            rate = pairs[name].iperf(args.seconds)
            trip = pairs[name].round_trips(args.trips)
            pairs[name].ping(max(1, args.pings // args.runs))
            note(f"  round {round_ + 1}/{args.runs} {name}: {rate:.0f} Mbit/s, "
                 f"round trip {trip:.4f} ms")


# -- bare QEMU ----------------------------------------------------------------------------------


class Bare:
    """Bare QEMUs on the default image, with virtpool's argv builder, run as root.

    Each goes into a control group beside virtpool's VMs' (``virtpool/<name>``, the same CPU
    weight and memory limit): on a busy host, CPU is shared between groups first, so a QEMU
    left in the root group would get more of it than virtpool's, and the benchmark would
    measure the scheduler instead of the network path."""

    def __init__(self, root: Path, images: Path) -> None:
        self.root = root
        self.image = images / IMAGE
        self.procs: list[subprocess.Popen[bytes]] = []
        self.groups: list[cgroups.VMCgroup] = []

    def start(self, name: str, nic: NicPlan | None = None, extra: tuple[str, ...] = (),
              netns: str | None = None) -> Sh:
        paths = VMPaths(self.root / name)
        paths.create()
        disks.create_blank(paths.disk, 16)
        argv = build_argv(LaunchPlan(
            name=name, cpus=1, memory_mib=MEMORY_MIB, kernel=self.image / "vmlinux",
            initrd=self.image / "initramfs.cpio.gz", paths=paths, accel="tcg",
            tsc_khz=host_tsc_khz(), nics=(nic,) if nic else (), extra=extra,
            user_kernel_args=CLOCK_ARGS))
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        group = cgroups.create(f"{PREFIX}-{name}")
        group.set_cpu_weight(CPU_WEIGHT_DEFAULT)
        group.set_memory_limit((MEMORY_MIB + QEMU_OVERHEAD_MIB) * MIB)
        self.groups.append(group)
        self.procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, start_new_session=True))
        group.attach(self.procs[-1].pid)
        asyncio.run(self._ready(paths.qga_sock, self.procs[-1], name))
        return bare_sh(paths.qga_sock)

    async def _ready(self, sock: Path, proc: subprocess.Popen[bytes], name: str) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise BenchError(f"bare QEMU {name} exited while booting")
            try:
                agent = await GuestAgent.open(sock, vm=name, sync_timeout=1.0)
                await agent.close()
                return
            # OperationFailed: node/qemu/peer.py reads no peer (uid -1) when a busy QEMU's
            # listener backlog was full and the non-blocking connect did not complete.
            except (GuestAgentError, OperationFailed):
                if time.monotonic() > deadline:
                    raise BenchError(f"bare QEMU {name}: no guest agent") from None
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        self.procs.clear()
        for group in self.groups:
            group.remove()
        self.groups.clear()


def address(sh: Sh, ip: str, mtu: int | None = None) -> None:
    """A static address on the guest's eth0 (its DHCP client found no server and gave up)."""
    mtu_cmd = f"ip link set eth0 mtu {mtu} && " if mtu else ""
    code, out = sh(f"ip addr flush dev eth0 && {mtu_cmd}ip addr add {ip}/24 dev eth0 && "
                   "ip link set eth0 up", 30, None)
    if code != 0:
        raise BenchError(f"could not address a bare guest: {out}")


@contextmanager
def bare_one_host(bare: Bare) -> Iterator[tuple[Sh, Sh, str]]:
    bridge, taps = f"{PREFIX}br0", [f"{PREFIX}t0", f"{PREFIX}t1"]
    try:
        run("ip", "link", "add", bridge, "type", "bridge")
        run("ip", "link", "set", bridge, "up")
        guests = []
        for i, tap in enumerate(taps):
            run("ip", "tuntap", "add", tap, "mode", "tap")
            run("ip", "link", "set", tap, "master", bridge, "up")
            sh = bare.start(f"bare1-{i}", NicPlan(tap=tap, mac=f"52:54:00:93:00:1{i}"))
            address(sh, f"{SUBNET_ONE}.1{i}")
            guests.append(sh)
        yield guests[1], guests[0], f"{SUBNET_ONE}.11"
    finally:
        bare.stop()
        for device in (*taps, bridge):
            run("ip", "link", "del", device, check=False)


@contextmanager
def bare_two_hosts(bare: Bare) -> Iterator[tuple[Sh, Sh, str]]:
    """By hand on the very lab virtpool's two hosts run in (namespaces joined by veths to a
    bridge in the root namespace: the underlay's path and its cost are the same), a bridge, a
    VXLAN device to the other namespace and a tap in each, MTU 1450."""
    lab = Lab(2, prefix=f"{PREFIX}b", subnet=BARE_LAB_SUBNET).setup()
    try:
        guests = []
        for i, host in enumerate(lab.hosts):
            ns, other = host.name, lab.hosts[1 - i]

            def ip(*args: str, ns: str = ns) -> None:
                run("ip", "-n", ns, *args)
            ip("link", "add", "br0", "mtu", "1450", "type", "bridge")
            ip("link", "add", "vx0", "mtu", "1450", "type", "vxlan", "id", str(VNI), "local",
               host.address, "remote", other.address, "dstport", "4789")
            ip("link", "set", "vx0", "master", "br0", "up")
            # The tap is made in the namespace: QEMU, started there, opens it by name.
            run("ip", "netns", "exec", ns, "ip", "tuntap", "add", "tap0", "mode", "tap")
            ip("link", "set", "tap0", "mtu", "1450", "master", "br0", "up")
            ip("link", "set", "br0", "up")
            sh = bare.start(f"bare2-{i}", NicPlan(tap="tap0", mac=f"52:54:00:94:00:1{i}"), netns=ns)
            address(sh, f"{SUBNET_TWO}.1{i}", mtu=1450)
            guests.append(sh)
        yield guests[1], guests[0], f"{SUBNET_TWO}.11"
    finally:
        bare.stop()
        lab.teardown()


@contextmanager
def user_mode(bare: Bare) -> Iterator[tuple[Sh, Sh, str, int]]:
    port = free_port()
    try:
        server = bare.start("user-0", extra=(
            "-netdev", f"user,id=u0,hostfwd=tcp:127.0.0.1:{port}-:{IPERF_PORT}",
            "-device", "virtio-net-device,netdev=u0"))
        client = bare.start("user-1", extra=("-netdev", "user,id=u0",
                                             "-device", "virtio-net-device,netdev=u0"))
        yield server, client, "10.0.2.2", port
    finally:
        bare.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- virtpool ------------------------------------------------------------------------------------


@contextmanager
def pool_one_host(root: Path, images: Path) -> Iterator[tuple[Sh, Sh, str]]:
    data = root / "pool1"
    data.mkdir(mode=0o711)
    link_image(images, data)
    server = Server(data, BOOT_TIMEOUT_S, extra_args=("--net-prefix", f"{PREFIX}v"))
    try:
        client = server.start()
        client.create_network("bench", subnet=f"{SUBNET_ONE}.0/24")
        for name in ("a", "b"):
            client.create_vm(name, networks=["bench"], memory_mib=MEMORY_MIB, start=True,
                             kernel_args=CLOCK_ARGS)
        for name in ("a", "b"):
            if client.wait_vm(name, timeout=BOOT_TIMEOUT_S).state != "running":
                raise BenchError(f"virtpool VM {name} did not boot: {client.vm(name).error}")
        yield pool_sh(client, "b"), pool_sh(client, "a"), client.vm("b").nics[0].address
    finally:
        if server.client is not None:
            for name in ("a", "b"):
                try:
                    server.client.delete_vm(name, force=True)
                except Exception:  # noqa: BLE001 - cleaning up
                    pass
            try:
                server.client.delete_network("bench")
            except Exception:  # noqa: BLE001
                pass
        server.stop()
        run("nft", "delete", "table", "inet", f"{PREFIX}vguard", check=False)


@contextmanager
def pool_two_hosts(root: Path, images: Path) -> Iterator[tuple[Sh, Sh, str]]:
    lab = Lab(2, prefix=f"{PREFIX}l", subnet=LAB_SUBNET).setup()
    control = root / "control"
    control.mkdir(mode=0o711)
    link_image(images, control)
    env = {**os.environ, "VIRTPOOL_DATA_DIR": str(control)}
    with (root / "control.log").open("ab") as log:
        proc = subprocess.Popen([VIRTPOOL, "server", "--data-dir", str(control), "--listen",
                                 "127.0.0.1:0", "--agent-listen", f"{LAB_SUBNET}.1:0"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    client: Client | None = None
    try:
        deadline = time.monotonic() + 60
        while not (control / "join.url").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError("virtpool server did not start")
            time.sleep(0.1)
        client = Client((control / "api.url").read_text().strip(),
                        (control / "admin.token").read_text().strip(), timeout=BOOT_TIMEOUT_S)
        join = (control / "join.url").read_text().strip()
        for host in lab.hosts:
            token = client.join_token(600)["token"]
            lab.start([VIRTPOOL, "agent", "--server", join, "--join", token, "--data-dir",
                       str(host.data_dir), "--listen", f"{host.address}:0", "--name", host.name,
                       "--net-prefix", f"{PREFIX}a"], host.data_dir.parent / f"{host.name}.log", host)
        deadline = time.monotonic() + 120

        def ready() -> set[str]:  # joined, and their inventory in (the room for a VM)
            return {h.name for h in client.hosts() if h.state == "up"  # type: ignore[union-attr]
                    and h.memory_mib.capacity - h.memory_mib.allocated >= MEMORY_MIB}
        while ready() < {h.name for h in lab.hosts}:
            if time.monotonic() > deadline:
                raise BenchError(f"the agents did not join: {client.hosts()}")
            time.sleep(0.5)
        client.create_network("bench", subnet=f"{SUBNET_TWO}.0/24")
        for name, host in zip(("a", "b"), lab.hosts):
            client.label_host(host.name, {"bench": name})
            client.create_vm(name, networks=["bench"], memory_mib=MEMORY_MIB, start=True,
                             required_labels={"bench": name}, kernel_args=CLOCK_ARGS)
        for name in ("a", "b"):
            if client.wait_vm(name, timeout=BOOT_TIMEOUT_S).state != "running":
                raise BenchError(f"virtpool VM {name} did not boot: {client.vm(name).error}")
        yield pool_sh(client, "b"), pool_sh(client, "a"), client.vm("b").nics[0].address
    finally:
        if client is not None:
            for name in ("a", "b"):
                try:
                    client.delete_vm(name, force=True)
                except Exception:  # noqa: BLE001 - cleaning up
                    pass
            client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        lab.teardown()


# -- the run ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="length of one iperf3 run")
    parser.add_argument("--runs", type=int, default=3, help="iperf3 runs per setup (median)")
    parser.add_argument("--pings", type=int, default=30, help="pings per setup (median RTT)")
    parser.add_argument("--trips", type=int, default=2000,
                        help="back-to-back round trips per round and setup (mean RTT)")
    parser.add_argument("--images", type=Path, default=Path(os.environ.get(
        "VIRTPOOL_TEST_IMAGES", REPO / ".cache" / "images")), help="image cache (built if missing)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: bridges, taps and namespaces")
    build_default_image(args.images, IMAGE)
    bundle = iperf_bundle()
    root = Path(tempfile.mkdtemp(prefix="virtpool-bench-net-"))
    root.chmod(0o711)
    bare = Bare(root / "bare", args.images)
    (root / "bare").mkdir()
    results: dict[str, dict[str, object]] = {}
    began = time.monotonic()
    # Setups compared with each other are up together and measured in turns.
    groups: list[list[tuple[str, Callable[[], object]]]] = [
        [("virtpool_one_host", lambda: pool_one_host(root, args.images)),
         ("bare_one_host", lambda: bare_one_host(bare))],
        [("virtpool_two_hosts", lambda: pool_two_hosts(root, args.images)),
         ("bare_two_hosts", lambda: bare_two_hosts(bare))],
        [("user_mode", lambda: user_mode(bare))],
    ]
    try:
        for group in groups:
            with ExitStack() as stack:
                pairs = {}
                for name, setup in group:
                    note(f"{name}: booting two VMs")
                    pairs[name] = Pair(stack.enter_context(setup()), bundle)  # type: ignore[arg-type]
                interleaved(pairs, args)
                for name, pair in pairs.items():
                    results[name] = pair.figures()
                    note(f"{name}: {results[name]}")
    except BenchError as err:
        note(f"benchmark failed: {err}")
        return 1
    finally:
        bare.stop()
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)
        note(f"wall time {time.monotonic() - began:.1f}s")

    def ratio(kind: str, of: str, to: str) -> float:
        return round(float(results[of][kind]) / float(results[to][kind]), 3)  # type: ignore[arg-type]

    note(f"{'setup':<20} {'Mbit/s':>10} {'RTT ms (mean)':>14} {'ping median':>12}")
    for name, figures in results.items():
        note(f"{name:<20} {figures['mbit_s']:>10.0f} {figures['rtt_ms']:>14} "
             f"{figures['ping_median_ms']:>12}")
    summary = {
        "name": "network",
        "throughput_ratio": ratio("mbit_s", "virtpool_one_host", "bare_one_host"),
        "latency_ratio": ratio("rtt_ms", "virtpool_one_host", "bare_one_host"),
        "throughput_ratio_two_hosts": ratio("mbit_s", "virtpool_two_hosts", "bare_two_hosts"),
        "latency_ratio_two_hosts": ratio("rtt_ms", "virtpool_two_hosts", "bare_two_hosts"),
        **{f"{name}_mbit_s": round(float(f["mbit_s"]), 1) for name, f in results.items()},  # type: ignore[arg-type]
        "latency_ratio_ping_median": ratio("ping_median_ms", "virtpool_one_host", "bare_one_host"),
        "latency_ratio_ping_median_two_hosts": ratio("ping_median_ms", "virtpool_two_hosts",
                                                     "bare_two_hosts"),
        **{f"{name}_mbit_s": round(float(f["mbit_s"]), 1) for name, f in results.items()},  # type: ignore[arg-type]
        **{f"{name}_rtt_ms": f["rtt_ms"] for name, f in results.items()},
        **{f"{name}_ping_median_ms": f["ping_median_ms"] for name, f in results.items()},
        "mbit_s_runs": {name: f["mbit_s_runs"] for name, f in results.items()},
        "rtt_ms_runs": {name: f["rtt_ms_runs"] for name, f in results.items()},
        "guest_clock": {name: f["guest_clock"] for name, f in results.items()},
        "guest_over_host_time": {name: f["guest_over_host_time"] for name, f in results.items()},
        "rtt_is": "median over rounds of the guest-timed mean of --trips back-to-back ping -A",
        "user_mode_rtt_is": "ping of slirp's gateway 10.0.2.2",
        "iperf_seconds": args.seconds, "iperf_runs": args.runs, "pings": args.pings,
        "trips": args.trips,
        "accel": "tcg",
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
