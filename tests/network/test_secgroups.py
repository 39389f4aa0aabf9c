"""Security groups with two real VMs on one real network (bridge, taps, nftables), reused by
every case (each starts with no group at all): without groups the network gets in and the host
does not; a rule opens and then closes a TCP port on a running VM; a CIDR rule lets in exactly
that address; --from-group follows its members; egress rules restrict egress; the rules survive
a restart of the platform (agent included), which also heals them when they were removed by
hand; deleting groups, and VMs while in one, leaves no rule, table or device.

Whether a probe was let through is read in the guest: a TCP probe must get the listener's
answer, and a dropped one must time out (a refusal would mean no listener, not a drop). ICMP
echoes from the host are counted by the guest's kernel (Icmp InEchos): the host never gets the
answers (its input from bridges is dropped), so only the count shows what arrived."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, wait_for
from tests.network.conftest import prefix_of, server_with_prefix
from tests.network.test_vm_networks import connects, dropped, our_devices, sh
from virtpool.sdk import Client

PORTS = (7000, 7001)


@pytest.fixture(scope="module")
def sg_server(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    # Its own prefix: other network tests may run on this machine at the same time.
    yield from server_with_prefix(tmp_path_factory, image_cache, "sg", "sgpool")


@pytest.fixture(scope="module")
def pair(sg_server: Server) -> dict[str, str]:
    """VMs a and b on network 'sgnet', running, each with TCP listeners on PORTS; 'gateway' is
    the host's address on it. The subnet is the server's own: the host routes its own packets
    by address, and servers of parallel workers would otherwise share one."""
    api = sg_server.api()
    letters = prefix_of(sg_server)[2:]
    subnet = f"10.62.{(ord(letters[0]) - 97) * 26 + ord(letters[1]) - 97}.0/24"
    assert sg_server.cli("network", "create", "sgnet", "--subnet", subnet).returncode == 0
    for vm in ("a", "b"):
        api.create_vm(vm, networks=["sgnet"], memory_mib=128, start=True)
    addresses = {}
    for vm in ("a", "b"):
        booted = api.wait_vm(vm, timeout=300)
        assert booted.state == "running", booted.error
        addresses[vm] = api.vm(vm).nics[0].address
        for port in PORTS:
            # One answer per connection, for as long as the VM runs.
            sh(api, vm, f"( while true; do echo ok-{vm}-{port} | nc -l -p {port}; done ) "
                        "</dev/null >/dev/null 2>&1 &")
    addresses["gateway"] = api.network("sgnet").gateway
    return addresses


@pytest.fixture(autouse=True)
def no_groups(pair: dict[str, str], sg_server: Server) -> None:
    """Each case starts with no group at all (cases may run apart, on other xdist workers)."""
    api = sg_server.api()
    for vm in ("a", "b"):
        if api.vm(vm).secgroups:
            api.set_vm_secgroups(vm, [])
    groups = api.secgroups()
    for group in groups:
        for rule in group.rules:
            api.remove_secgroup_rule(group.name, rule.id)
    for group in groups:
        api.delete_secgroup(group.name)


def web_group(api: Client, *rules: dict[str, Any]) -> None:
    """Group 'web' with ``rules``, and b in it."""
    api.create_secgroup("web")
    for rule in rules:
        api.add_secgroup_rule("web", **rule)
    api.set_vm_secgroups("b", ["web"])


def echoes_received(api: Client, vm: str) -> int:
    _, out = sh(api, vm, "cat /proc/net/snmp")
    rows = [line.split() for line in out.splitlines() if line.startswith("Icmp:")]
    return int(rows[1][rows[0].index("InEchos")])


def host_pings_reach(api: Client, vm: str, address: str) -> bool:
    before = echoes_received(api, vm)
    subprocess.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", address], capture_output=True)
    return echoes_received(api, vm) > before


def ruleset(server: Server, family: str) -> dict[str, Any] | None:
    """Our security-group table in ``family``: its chains, and each chain's rules in order,
    without handles and counters; None if absent. The order of the chains themselves means
    nothing to nftables (a chain added by a later converge is listed last), so it is left out."""
    done = subprocess.run(["nft", "-j", "list", "table", family, f"{prefix_of(server)}sg"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None
    chains: dict[str, Any] = {}
    rules: dict[str, list[Any]] = {}
    for item in json.loads(done.stdout)["nftables"]:
        for kind, body in item.items():
            if kind not in ("chain", "rule"):
                continue
            body.pop("handle", None)
            if kind == "chain":
                chains[body["name"]] = body
            else:
                body["expr"] = [e for e in body["expr"] if "counter" not in e]
                rules.setdefault(body["chain"], []).append(body)
    return {"chains": chains, "rules": rules}


def test_without_groups_the_network_gets_in_and_the_host_does_not(
        sg_server: Server, pair: dict[str, str]) -> None:
    api = sg_server.api()
    assert connects(api, "a", pair["b"], 7000) and connects(api, "b", pair["a"], 7001)
    before = echoes_received(api, "b")
    assert sh(api, "a", f"ping -c 2 -W 3 {pair['b']}")[0] == 0
    assert echoes_received(api, "b") >= before + 2  # the count sees echoes that arrive
    assert not host_pings_reach(api, "b", pair["b"])  # the host is not the network
    assert api.vm("b").secgroups == []


def test_a_rule_opens_then_closes_a_port_on_a_running_vm(sg_server: Server, pair: dict[str, str]) -> None:
    api = sg_server.api()
    assert sg_server.cli("secgroup", "create", "web").returncode == 0
    joined = sg_server.cli("vm", "set", "b", "--secgroup", "web")
    assert joined.returncode == 0, joined.stderr
    # A group without rules: nothing gets in, not even from the same network.
    assert dropped(api, "a", pair["b"], 7000)
    opened = sg_server.cli("secgroup", "rule", "add", "web", "--ingress", "--proto", "tcp",
                           "--port", "7000")
    assert opened.returncode == 0, opened.stderr
    assert connects(api, "a", pair["b"], 7000)
    assert dropped(api, "a", pair["b"], 7001)  # only that port
    assert sh(api, "a", f"ping -c 2 -W 2 {pair['b']}")[0] != 0  # nor icmp
    # b's egress is open, and the answers to its connections come back in.
    assert connects(api, "b", pair["a"], 7000)
    closed = sg_server.cli("secgroup", "rule", "remove", "web", "--ingress", "--proto", "tcp",
                           "--port", "7000")
    assert closed.returncode == 0, closed.stderr
    assert dropped(api, "a", pair["b"], 7000)


def test_a_cidr_rule_lets_in_that_address_only(sg_server: Server, pair: dict[str, str]) -> None:
    api = sg_server.api()
    web_group(api)
    rule = api.add_secgroup_rule("web", "ingress", "icmp", remote_cidr=f"{pair['gateway']}/32")
    assert host_pings_reach(api, "b", pair["b"])  # the host's address is in the rule
    assert sh(api, "a", f"ping -c 2 -W 2 {pair['b']}")[0] != 0  # a's is not
    api.remove_secgroup_rule("web", rule.id)
    assert not host_pings_reach(api, "b", pair["b"])


def test_from_group_follows_the_groups_members(sg_server: Server, pair: dict[str, str]) -> None:
    api = sg_server.api()
    web_group(api)
    api.create_secgroup("clients")
    api.add_secgroup_rule("web", "ingress", "tcp", ports="7000", remote_group="clients")
    assert dropped(api, "a", pair["b"], 7000)  # clients has no members yet
    assert api.set_vm_secgroups("a", ["clients"]).secgroups == ["clients"]
    assert connects(api, "a", pair["b"], 7000)
    assert dropped(api, "a", pair["b"], 7001)
    # a is in a group without ingress rules now: b cannot get in to it.
    assert dropped(api, "b", pair["a"], 7000)
    api.set_vm_secgroups("a", [])
    assert dropped(api, "a", pair["b"], 7000)  # no longer a member
    assert connects(api, "b", pair["a"], 7000)  # a is back to the network's default


def test_egress_rules_restrict_egress(sg_server: Server, pair: dict[str, str]) -> None:
    api = sg_server.api()
    web_group(api)
    assert connects(api, "b", pair["a"], 7000)  # egress is open while no rule restricts it
    rule = api.add_secgroup_rule("web", "egress", "tcp", ports="7001",
                                 remote_cidr=f"{pair['a']}/32")
    assert connects(api, "b", pair["a"], 7001)
    assert dropped(api, "b", pair["a"], 7000)
    api.remove_secgroup_rule("web", rule.id)
    assert connects(api, "b", pair["a"], 7000)


def test_rules_survive_a_restart_which_heals_them(sg_server: Server, pair: dict[str, str]) -> None:
    api = sg_server.api()
    web_group(api, {"direction": "ingress", "proto": "tcp", "ports": "7000"})
    assert connects(api, "a", pair["b"], 7000) and dropped(api, "a", pair["b"], 7001)
    before = {family: ruleset(sg_server, family) for family in ("inet", "bridge")}
    assert before["inet"] is not None and before["bridge"] is not None
    sg_server.stop()
    # While the platform (and its agent) is down, someone removes the tables by hand.
    for family in ("inet", "bridge"):
        subprocess.run(["nft", "delete", "table", family, f"{prefix_of(sg_server)}sg"], check=True)
    sg_server.start()
    api = sg_server.api()
    assert wait_for(lambda: api.vm("b").state == "running", timeout=60)
    assert wait_for(lambda: ruleset(sg_server, "inet") == before["inet"], timeout=60)
    assert ruleset(sg_server, "bridge") == before["bridge"]
    assert connects(api, "a", pair["b"], 7000) and dropped(api, "a", pair["b"], 7001)


def test_deleting_leaves_no_rule_and_no_table(sg_server: Server, pair: dict[str, str]) -> None:
    api = sg_server.api()
    web_group(api, {"direction": "ingress", "proto": "tcp", "ports": "7000"},
              {"direction": "egress", "proto": "icmp"})
    assert "out_" in subprocess.run(["nft", "list", "table", "inet", f"{prefix_of(sg_server)}sg"],
                                    capture_output=True, text=True, check=True).stdout
    assert sg_server.cli("vm", "set", "b", "--no-secgroup").returncode == 0
    deleted = sg_server.cli("secgroup", "delete", "web")
    assert deleted.returncode == 0, deleted.stderr
    text = subprocess.run(["nft", "list", "table", "inet", f"{prefix_of(sg_server)}sg"],
                          capture_output=True, text=True, check=True).stdout
    # No rule of the groups is left: b has the network's default again, as a has.
    assert "dport 700" not in text and "out_" not in text and "icmp" not in text
    assert text.count("ct status dnat return") == 2
    assert connects(api, "a", pair["b"], 7001)
    # A VM deleted while in a group takes its taps and rules along too.
    api.create_secgroup("last")
    api.set_vm_secgroups("b", ["last"])
    for vm in ("a", "b"):
        api.delete_vm(vm, force=True)
    api.delete_secgroup("last")
    api.delete_network("sgnet")
    assert ruleset(sg_server, "inet") is None and ruleset(sg_server, "bridge") is None
    assert our_devices(sg_server) == []
