"""A network that spans the host of `virtpool up` and a joined agent: the up-host is one host
among others. `virtpool up --agent-listen ADDR:PORT` takes ADDR, one particular address the
agents reach, as its host's VXLAN address (or `--vtep ADDR` says it), so the control plane
pushes it to the agents as a peer and the up-host's own VXLAN device floods to them. A VM on
the up-host and a VM on the agent's host (a network namespace on a bridge) ping each other and
exchange TCP; a security-group rule on the joined host's VM opens and then closes a port to
the up-host's VM; afterwards neither host keeps a device of the network.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.harness import Lab, NetnsHost
from tests.conftest import VIRTPOOL, Server, make_server, passable, qemu_pids, wait_for
from tests.network.test_vm_networks import connects, dropped, pings, sh

_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
LAB_PREFIX = f"pqv{_WORKER}"
LAB_SUBNET = f"10.252.{10 + _WORKER}"
UP_PREFIX = "pqu"  # the up-host's bridges, taps and VXLAN devices (the root namespace)
AGENT_PREFIX = "pqa"
SUBNET = f"10.{91 + _WORKER}.0.0/24"
BOOT_WAIT_S = 300
PORTS = (7000, 7001)


@dataclass
class UpPool:
    lab: Lab
    server: Server
    agent_host: NetnsHost


def devices(prefix: str, host: NetnsHost | None = None) -> list[str]:
    argv = ["ip", "-o", "link", "show"]
    out = subprocess.run(["ip", "netns", "exec", host.name, *argv] if host else argv,
                         capture_output=True, text=True, timeout=30).stdout
    names = [line.split(": ")[1].split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(prefix)]


def flood_peers(prefix: str, host: NetnsHost | None = None) -> list[str]:
    """The underlay addresses a host's VXLAN devices flood to (head-end replication)."""
    argv = ["bridge", "fdb", "show"]
    out = subprocess.run(["ip", "netns", "exec", host.name, *argv] if host else argv,
                         capture_output=True, text=True, timeout=30).stdout
    return sorted(line.split(" dst ")[1].split()[0] for line in out.splitlines()
                  if line.startswith("00:00:00:00:00:00") and " dst " in line
                  and f"{prefix}vx" in line)


@pytest.fixture(scope="module")
def up_pool(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[UpPool]:
    lab = Lab(1, prefix=LAB_PREFIX, subnet=LAB_SUBNET,
              root=tmp_path_factory.mktemp("up-vtep")).setup()
    passable(lab.root)
    server = None
    try:
        server = make_server(tmp_path_factory, image_cache, "up-vtep", boot_timeout=BOOT_WAIT_S,
                             extra_args=("--agent-listen", f"{LAB_SUBNET}.1:0",
                                         "--net-prefix", UP_PREFIX))
        host = lab.hosts[0]
        token = server.api().join_token(600)["token"]
        join = (server.data_dir / "join.url").read_text().strip()
        log = lab.root / f"{host.name}.log"
        lab.start([VIRTPOOL, "agent", "--server", join, "--join", token, "--data-dir",
                   str(host.data_dir), "--listen", f"{host.address}:0", "--name", host.name,
                   "--net-prefix", AGENT_PREFIX], log, host)
        # Joined once it is up with its capacity (a create placed before that finds none).
        assert wait_for(lambda: any(h.name == host.name and h.state == "up" and h.address
                                    and h.memory_mib.physical > 0
                                    for h in server.api().hosts()), timeout=90), \
            log.read_text(errors="replace")[-3000:]
        yield UpPool(lab, server, host)
        for vm in server.api().vms():
            server.api().delete_vm(vm.id, force=True)
    finally:
        if server is not None:
            server.cleanup()
            assert qemu_pids(server.data_dir) == []
        lab.teardown()
    assert lab.leftovers() == {"namespaces": [], "links": [], "processes": [], "files": []}
    assert devices(UP_PREFIX) == []


@pytest.fixture(scope="module")
def spanning(up_pool: UpPool) -> dict[str, str]:
    """VM 'here' on the up-host and 'there' on the joined host, both on network 'span' and
    running, 'there' answering TCP on PORTS; their addresses."""
    api = up_pool.server.api()
    api.create_network("span", subnet=SUBNET)
    ops = [api.create_vm("here", networks=["span"], memory_mib=128, host=api.host().hostname,
                         start=True),
           api.create_vm("there", networks=["span"], memory_mib=128,
                         host=up_pool.agent_host.name, start=True)]
    for op in ops:
        done = api.wait_operation(op, timeout=BOOT_WAIT_S, check=False)
        assert done.status == "succeeded", done
    for port in PORTS:
        sh(api, "there", f"( while true; do echo ok-there-{port} | nc -l -p {port}; done ) "
                         "</dev/null >/dev/null 2>&1 &")
    return {vm: api.vm(vm).nics[0].address for vm in ("here", "there")}


def test_a_vm_on_the_up_host_and_one_on_a_joined_host_share_a_network(
        up_pool: UpPool, spanning: dict[str, str]) -> None:
    api = up_pool.server.api()
    remote = up_pool.agent_host
    assert (api.vm("here").host, api.vm("there").host) == (api.host().hostname, remote.name)
    # Each host floods the network's traffic to the other: the up-host's VXLAN address is the
    # one the agents join it at.
    assert wait_for(lambda: flood_peers(UP_PREFIX) == [remote.address]
                    and flood_peers(AGENT_PREFIX, remote) == [f"{LAB_SUBNET}.1"], timeout=60), \
        (flood_peers(UP_PREFIX), flood_peers(AGENT_PREFIX, remote))
    assert wait_for(lambda: pings(api, "here", spanning["there"]), timeout=60)
    assert pings(api, "there", spanning["here"])
    assert connects(api, "here", spanning["there"], PORTS[0])


def test_a_security_group_rule_opens_then_closes_a_port_across_the_two_hosts(
        up_pool: UpPool, spanning: dict[str, str]) -> None:
    """The rules of 'there' are its host's (the joined agent's nftables), the client is on
    the other host: the rule's change reaches that agent while both VMs run."""
    api = up_pool.server.api()
    there = spanning["there"]
    api.create_secgroup("web")
    try:
        api.set_vm_secgroups("there", ["web"])
        assert dropped(api, "here", there, PORTS[0])  # a group without rules: nothing gets in
        rule = api.add_secgroup_rule("web", "ingress", "tcp", ports=str(PORTS[0]),
                                     remote_group="web")
        assert dropped(api, "here", there, PORTS[0])  # 'here' is not a member yet
        api.set_vm_secgroups("here", ["web"])  # a member on the other host: let in
        assert connects(api, "here", there, PORTS[0])
        assert dropped(api, "here", there, PORTS[1])  # only that port
        api.remove_secgroup_rule("web", rule.id)
        assert dropped(api, "here", there, PORTS[0])
    finally:
        for vm in ("here", "there"):
            api.set_vm_secgroups(vm, [])
        for group in api.secgroups():
            for each in group.rules:
                api.remove_secgroup_rule(group.name, each.id)
            api.delete_secgroup(group.name)
    assert connects(api, "here", there, PORTS[0])  # no group: the network gets in again


def test_deleting_the_vms_and_the_network_leaves_no_device_on_either_host(
        up_pool: UpPool, spanning: dict[str, str]) -> None:
    api = up_pool.server.api()
    remote = up_pool.agent_host
    api.delete_vm("there", force=True)
    assert wait_for(lambda: flood_peers(UP_PREFIX) == [] and devices(AGENT_PREFIX, remote) == [],
                    timeout=60), (flood_peers(UP_PREFIX), devices(AGENT_PREFIX, remote))
    api.delete_vm("here", force=True)
    api.delete_network("span")
    assert wait_for(lambda: devices(UP_PREFIX) == [], timeout=60), devices(UP_PREFIX)


@pytest.mark.parametrize("vtep", ["127.0.0.1", "0.0.0.0", "somehost", "fe80::1"])
def test_a_vtep_that_cannot_carry_vxlan_is_refused_before_anything_starts(
        tmp_path: Path, vtep: str) -> None:
    data = tmp_path / "never"
    result = subprocess.run([VIRTPOOL, "up", "--data-dir", str(data), "--listen", "127.0.0.1:0",
                             "--vtep", vtep], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "--vtep" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not data.exists()
