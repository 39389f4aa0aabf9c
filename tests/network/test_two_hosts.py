"""Two "hosts" on one machine: two network namespaces joined by a veth pair (the underlay),
each given the agent's own plan for one network (bridge + VXLAN to the other + a tap), applied
inside it by the agent's applier; one real VM per host, its QEMU attached to the tap of its
namespace. The VMs get their addresses from each host's dnsmasq and reach each other over VXLAN
(ping and TCP both ways). Tearing the plans down leaves no device, rule or dnsmasq."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import passable
from tests.network.conftest import next_prefix
from virtpool.model.network import HostNetwork, HostNetworkInput, HostNic
from virtpool.node import disks
from virtpool.node.net.apply import NetworkApplier
from virtpool.node.net.plan import host_plan
from virtpool.node.net.tap import open_tap
from virtpool.node.qemu.accel import host_tsc_khz
from virtpool.node.qemu.argv import LaunchPlan, NicPlan, build_argv
from virtpool.node.qemu.guest_agent import GuestAgent, GuestAgentError
from virtpool.node.vmdir import VMPaths

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


@pytest.fixture
def two_hosts(tmp_path: Path, image_cache: Path) -> Iterator[tuple[list[str], list[Path], str]]:
    passable(tmp_path)  # dnsmasq reads its hosts file as nobody
    prefix = next_prefix()
    namespaces = [f"{prefix}-ha", f"{prefix}-hb"]
    for ns in namespaces:
        # A run killed before its teardown leaves its namespaces: the names are this test's own.
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        ip("netns", "add", ns)
    ip("link", "add", f"{prefix}ua", "type", "veth", "peer", "name", f"{prefix}ub")
    appliers, qemus, socks = [], [], []
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
        yield namespaces, socks, prefix
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


def test_vms_on_two_hosts_reach_each_other_over_vxlan(two_hosts: tuple[list[str], list[Path], str]) -> None:
    namespaces, socks, prefix = two_hosts
    for i, sock in enumerate(socks):
        code, out = asyncio.run(guest(sock, ["sh", "-c", "ip -4 addr show eth0"]))
        assert f"inet {ADDRESSES[i]}/24" in out, out
    for i, sock in enumerate(socks):
        code, out = asyncio.run(guest(sock, ["ping", "-c", "2", "-W", "3", ADDRESSES[1 - i]]))
        assert code == 0, out
    # TCP: host b's VM listens, host a's connects, both ends get the other's words.
    asyncio.run(guest(socks[1], ["sh", "-c", "( echo from-b | nc -l -p 7000 >/tmp/got ) "
                                             "</dev/null >/dev/null 2>&1 &"]))
    code, out = asyncio.run(guest(socks[0], ["sh", "-c", f"echo from-a | nc -w 3 {ADDRESSES[1]} 7000"]))
    assert "from-b" in out
    code, out = asyncio.run(guest(socks[1], ["sh", "-c", "sleep 1; cat /tmp/got"]))
    assert "from-a" in out
    # The VXLAN device of each host carries the traffic to the other host's underlay address.
    fdb = subprocess.run(["ip", "netns", "exec", namespaces[0], "bridge", "fdb", "show", "dev",
                          f"{prefix}vx{VNI}"], capture_output=True, text=True).stdout
    assert f"dst {UNDERLAY[1]}" in fdb
