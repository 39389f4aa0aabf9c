"""Fixtures of the network tests. A `virtpool up` whose host devices and nftables tables carry
a prefix of their own (``nw`` + one letter per xdist worker + one per server), so that servers
of parallel workers, and other test runs on the same machine, never touch each other's."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import string
import subprocess
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import Server, make_server, passable, qemu_pids
from virtpool.model.network import HostNetwork, HostNetworkInput, HostNic
from virtpool.node import disks
from virtpool.node.net.apply import NetworkApplier
from virtpool.node.net.plan import HostPlan, host_plan
from virtpool.node.net.tap import open_tap
from virtpool.node.qemu.accel import host_tsc_khz
from virtpool.node.qemu.argv import LaunchPlan, NicPlan, build_argv
from virtpool.node.qemu.guest_agent import GuestAgent, GuestAgentError
from virtpool.node.vmdir import VMPaths

_servers = itertools.count()


def next_prefix(base: str | None = None) -> str:
    """``base`` (the tests' own two letters) + one letter per xdist worker + one per server."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    letters = string.ascii_lowercase
    # Two letters of its own per test run on a shared machine (VIRTPOOL_TEST_NET_PREFIX), unless
    # the tests name their own.
    base = base or os.environ.get("VIRTPOOL_TEST_NET_PREFIX", "nw")[:2]
    return f"{base}{letters[int(worker or 0) % 26]}{letters[next(_servers) % 26]}"


def free_subnet(prefix: str, base: str = "10.233") -> str:
    """A /24 of ``base``.0.0/16 (as ``10.233.N``) on which no interface of this machine has an
    address, the search starting at a place of ``prefix``'s own: a lab's bridge sits in the root
    namespace, where two runs' labs on one /24 would steal each other's routes."""
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                          check=True).stdout
    start = zlib.crc32(prefix.encode()) % 254
    for k in range(254):
        subnet = f"{base}.{1 + (start + k) % 254}"
        if f" {subnet}." not in used:
            return subnet
    raise RuntimeError(f"every /24 of {base}.0.0/16 has an address on this machine")


def prefix_of(server: Server) -> str:
    args = list(server.extra_args)
    return args[args.index("--net-prefix") + 1]


@pytest.fixture(scope="module")
def net_server(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    yield from server_with_prefix(tmp_path_factory, image_cache, None, "netpool")


def server_with_prefix(tmp_path_factory: pytest.TempPathFactory, image_cache: Path,
                       base: str | None, name: str) -> Iterator[Server]:
    """A `virtpool up` whose devices and tables are named ``base`` (None: the run's) + two
    letters, removed (with its guard table) when the generator is closed."""
    prefix = next_prefix(base)
    srv = make_server(tmp_path_factory, image_cache, name, boot_timeout=150.0,
                      extra_args=("--net-prefix", prefix))
    yield srv
    srv.cleanup()
    assert qemu_pids(srv.data_dir) == [], "QEMU processes outlived their server's cleanup"
    # The host guard stays while VMs may run; once this server's VMs are gone, so does its table.
    subprocess.run(["nft", "delete", "table", "inet", f"{prefix}guard"], check=True)


# -- two namespaces as two hosts, the applier's plans applied in each, a VM on each -----------

VNI = 4242
SUBNET = "10.98.0.0/24"
UNDERLAY = ("10.199.0.1", "10.199.0.2")
ADDRESSES = ("10.98.0.10", "10.98.0.11")
MACS = ("52:54:00:42:00:10", "52:54:00:42:00:11")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def tap_fd_in(netns: str, name: str) -> int:
    """A descriptor on the tap ``name`` of ``netns`` (opened from a thread that enters it)."""
    from pyroute2.netns import setns

    found: list[int] = []

    def enter_and_open() -> None:
        setns(netns, flags=0)
        found.append(open_tap(name))

    thread = threading.Thread(target=enter_and_open)
    thread.start()
    thread.join()
    return found[0]


async def guest(sock: Path, argv: list[str], timeout: float = 60) -> tuple[int, str]:
    agent = await GuestAgent.open(sock, vm="vx")
    async with agent:
        result = await agent.exec(argv, timeout=timeout)
    return result.exit_code, result.stdout + result.stderr


async def wait_ready(sock: Path, qemu: subprocess.Popen[bytes], timeout: float = 300) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if qemu.poll() is not None:
            raise RuntimeError("QEMU exited while booting")
        try:
            agent = await GuestAgent.open(sock, vm="vx", sync_timeout=1.0)
            await agent.close()
            return
        except GuestAgentError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


@dataclass
class TwoHosts:
    """Two namespaces standing for hosts, a VM on each on one network: each host's applier and
    the input it was last converged to."""

    namespaces: list[str]
    socks: list[Path]  # the VMs' guest agent sockets
    prefix: str
    appliers: list[NetworkApplier]
    desired: list[HostNetworkInput]

    def plan(self, i: int, desired: HostNetworkInput | None = None) -> HostPlan:
        return host_plan(desired or self.desired[i], self.prefix)


@pytest.fixture
def two_hosts(tmp_path: Path, image_cache: Path) -> Iterator[TwoHosts]:
    """Two hosts joined by a veth pair (the underlay), one network between them, a booted VM
    attached to its tap on each; torn down to nothing."""
    passable(tmp_path)  # dnsmasq reads its hosts file as nobody
    prefix = next_prefix()
    namespaces = [f"{prefix}-ha", f"{prefix}-hb"]
    for ns in namespaces:
        # A run killed before its teardown leaves its namespaces: the names are this test's own.
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        ip("netns", "add", ns)
    ip("link", "add", f"{prefix}ua", "type", "veth", "peer", "name", f"{prefix}ub")
    appliers, qemus, socks, inputs = [], [], [], []
    try:
        for i, ns in enumerate(namespaces):
            end = f"{prefix}u{'ab'[i]}"
            ip("link", "set", end, "netns", ns)
            ip("-n", ns, "addr", "add", f"{UNDERLAY[i]}/24", "dev", end)
            ip("-n", ns, "link", "set", end, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        image = image_cache / "default"
        for i, ns in enumerate(namespaces):
            desired = HostNetworkInput(
                networks=(HostNetwork(vni=VNI, subnet=SUBNET, peers=(UNDERLAY[1 - i],)),),
                nics=(HostNic(nic_id=f"{i}abc0000{i}", vm_id=f"vm{i}", position=0, vni=VNI,
                              mac=MACS[i], address=ADDRESSES[i], slot=0),),
                underlay=UNDERLAY[i])
            inputs.append(desired)
            plan = host_plan(desired, prefix)
            applier = NetworkApplier(prefix, tmp_path / f"net{i}", netns=ns)
            appliers.append(applier)
            applier.converge(plan)
            tap = plan.taps_of(f"vm{i}")[0]
            paths = VMPaths(tmp_path / f"vm{i}")
            paths.create()
            disks.create_blank(paths.disk, 16)
            fd = tap_fd_in(ns, tap.name)
            argv = build_argv(LaunchPlan(
                name=f"vx{i}", cpus=1, memory_mib=128, kernel=image / "vmlinux",
                initrd=image / "initramfs.cpio.gz", paths=paths, accel="tcg",
                tsc_khz=host_tsc_khz(), sandbox=False,
                nics=(NicPlan(tap=tap.name, mac=tap.mac, fd=fd),)))
            qemus.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, pass_fds=(fd,),
                                          start_new_session=True))
            socks.append(paths.qga_sock)
        for sock, qemu in zip(socks, qemus):
            asyncio.run(wait_ready(sock, qemu))
        yield TwoHosts(namespaces, socks, prefix, appliers, inputs)
    finally:
        try:
            for qemu in qemus:
                qemu.kill()
                qemu.wait()
            for applier in appliers:
                applier.converge(host_plan(HostNetworkInput(), prefix))
                assert applier.devices() == {}
                assert not [p for p in psutil.process_iter(["cmdline"])
                            if any(str(applier.state_dir) in a for a in p.info["cmdline"] or [])]
        finally:
            # Even when a check above fails, the namespaces go: a later run needs their names.
            for ns in namespaces:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@dataclass(frozen=True)
class HostState:
    """What a converge that changes nothing leaves as it was, read from the kernel and the
    processes of one host."""

    tables: frozenset[tuple[str, str, int]]  # (family, name, handle): a table made anew has
    # a new handle (the kernel counts them up), while its rules get the same handles again
    rules: frozenset[tuple[str, str, str, int]]  # (family, table, chain, handle)
    links: tuple[tuple[str, int], ...]  # (name, ifindex) of the bridges, VXLANs and taps
    dnsmasq: tuple[int, ...]  # the pids of the dnsmasqs of the state dir

    def diff(self, other: HostState) -> dict[str, object]:
        """What differs from ``other``, for a failing assertion's message."""
        out: dict[str, object] = {}
        for name in ("tables", "rules", "links", "dnsmasq"):
            mine, theirs = set(getattr(self, name)), set(getattr(other, name))
            if mine != theirs:
                out[name] = {"gone": sorted(mine - theirs), "new": sorted(theirs - mine)}
        return out


def kernel_state(netns: str, prefix: str, state_dir: Path) -> HostState:
    def run(*argv: str) -> object:
        return json.loads(subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                                         text=True, check=True, timeout=30).stdout)

    listing = run("nft", "-j", "list", "ruleset")["nftables"]  # type: ignore[index]
    tables = frozenset((t["family"], t["name"], t["handle"]) for item in listing
                       if (t := item.get("table")) and t["name"].startswith(prefix))
    rules = frozenset((r["family"], r["table"], r["chain"], r["handle"]) for item in listing
                      if (r := item.get("rule")) and r["table"].startswith(prefix))
    links = tuple(sorted((link["ifname"], link["ifindex"]) for link in run("ip", "-j", "link", "show")  # type: ignore[attr-defined]
                         if link["ifname"].startswith((f"{prefix}br", f"{prefix}vx", f"{prefix}t"))))
    dnsmasq = tuple(sorted(p.pid for p in psutil.process_iter(["name", "cmdline"])
                           if p.info["name"] == "dnsmasq"
                           and any(str(state_dir) in a for a in p.info["cmdline"] or [])))
    return HostState(tables, rules, links, dnsmasq)
