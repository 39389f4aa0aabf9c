"""A host without the kernel features or tools virtual networks need: the agent's applier says
which one is missing and what to do, before it changes anything, so nothing is left half-made.

Both faults are real, inside a network namespace of the test's own: the kernel is really asked
for a device of a kind it does not have (the applier's device kinds are injectable: a kind no
module provides gets the very refusal a kernel without the vxlan or bridge module gives), and
``nft`` is really absent from the agent's PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import passable
from virtpool.model.errors import OperationFailed
from virtpool.model.network import HostNetwork, HostNetworkInput, HostNic
from virtpool.node.net.apply import DEVICE_KINDS, NetworkApplier
from virtpool.node.net.plan import HostPlan, host_plan

_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
PREFIX = f"npf{'abcdefghij'[_WORKER % 10]}"
NETNS = f"{PREFIX}-host"
VNI = 4301


def plan_with_peers(nat: bool = False) -> HostPlan:
    """A bridge, a VXLAN device to another host, a tap: every kind of device."""
    return host_plan(HostNetworkInput(
        networks=(HostNetwork(vni=VNI, subnet="10.97.0.0/24", nat=nat, peers=("10.199.9.2",)),),
        nics=(HostNic(nic_id="feed0000beef", vm_id="vm0", position=0, vni=VNI,
                      mac="52:54:00:97:00:10", address="10.97.0.10", slot=0),),
        underlay="10.199.9.1"), PREFIX)


def devices() -> list[str]:
    out = subprocess.run(["ip", "-n", NETNS, "-o", "link", "show"], capture_output=True,
                         text=True, check=True).stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines()
            if line.split(": ")[1].startswith(PREFIX)]


def tables() -> str:
    return subprocess.run(["ip", "netns", "exec", NETNS, "nft", "list", "tables"],
                          capture_output=True, text=True, check=True).stdout


def dnsmasqs(state_dir: Path) -> list[int]:
    return [p.pid for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "dnsmasq"
            and any(str(state_dir) in a for a in p.info["cmdline"] or [])]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Path]:
    """A namespace standing for the host, with the underlay address; its state dir."""
    passable(tmp_path)
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        for argv in (["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                     ["addr", "add", "10.199.9.1/24", "dev", "eth0"],
                     ["link", "set", "eth1", "up"], ["link", "set", "eth0", "up"]):
            subprocess.run(["ip", "-n", NETNS, *argv], check=True)
        yield tmp_path / "net"
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=True)


@pytest.mark.parametrize("kind", ["vxlan", "bridge", "tuntap"])
def test_a_kernel_without_a_device_kind_is_named_and_nothing_is_made(host: Path, kind: str) -> None:
    applier = NetworkApplier(PREFIX, host, netns=NETNS,
                             kinds={**DEVICE_KINDS, kind: f"{PREFIX}no{kind}"})
    with pytest.raises(OperationFailed) as refused:
        applier.converge(plan_with_peers(nat=True))
    assert f"cannot make {kind} devices" in refused.value.message
    assert "modprobe" in (refused.value.hint or "")
    assert devices() == [] and PREFIX not in tables() and dnsmasqs(host) == []
    forwarding = subprocess.run(["ip", "netns", "exec", NETNS, "cat",
                                 "/proc/sys/net/ipv4/conf/eth0/forwarding"],
                                capture_output=True, text=True, check=True).stdout.strip()
    assert forwarding == "0"  # NAT asked for, but nothing switched on either
    # The positive control: the same plan on the kernel's real kinds is made in full.
    real = NetworkApplier(PREFIX, host, netns=NETNS)
    real.converge(plan_with_peers())
    assert sorted(devices()) == sorted(plan_with_peers().device_names())
    real.converge(HostPlan(prefix=PREFIX, underlay=None))
    assert devices() == [] and PREFIX not in tables() and dnsmasqs(host) == []


def test_a_host_without_nft_is_told_so_and_nothing_is_made(
        host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = tmp_path / "bin"  # everything the applier runs but nft
    tools.mkdir()
    for tool in ("ip", "dnsmasq", "sysctl", "cat"):
        found = shutil.which(tool)
        assert found, tool
        (tools / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(tools))
    assert shutil.which("nft") is None
    with pytest.raises(OperationFailed) as refused:
        NetworkApplier(PREFIX, host, netns=NETNS).converge(plan_with_peers())
    assert "nft is not installed" in refused.value.message
    assert "install-system-packages" in (refused.value.hint or "")
    monkeypatch.undo()
    assert devices() == [] and PREFIX not in tables() and dnsmasqs(host) == []
