"""The host network plan (pure): device names, taps per VM, nftables rules, dnsmasq settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtpool.model.network import HostNetwork, HostNetworkInput, HostNic, NicRequest, parse_subnet
from virtpool.node.net.dhcp import dnsmasq_argv
from virtpool.node.net.plan import IFNAMSIZ, host_plan, nft_commands

NICS = (
    HostNic(nic_id="aaaaaaaa11", vm_id="vm1", position=1, vni=4096, mac="52:54:00:00:00:02",
            address="10.20.0.3", slot=1),
    HostNic(nic_id="bbbbbbbb22", vm_id="vm1", position=0, vni=4097, mac="52:54:00:00:00:01",
            address="10.30.0.2", slot=1),
)
DESIRED = HostNetworkInput(
    networks=(HostNetwork(vni=4096, subnet="10.20.0.0/24", nat=True, peers=("192.0.2.9",)),
              HostNetwork(vni=4097, subnet="10.30.0.0/24")),
    nics=NICS)


def test_one_bridge_per_network_vxlan_only_with_peers_taps_owned_by_the_vm_user() -> None:
    plan = host_plan(DESIRED, "nw", lambda slot: 2_000_000 + slot)
    assert [b.name for b in plan.bridges] == ["nwbr4096", "nwbr4097"]
    assert plan.bridges[0].vxlan == "nwvx4096" and plan.bridges[0].peers == ("192.0.2.9",)
    assert plan.bridges[1].vxlan is None
    assert plan.bridges[0].gateway == "10.20.0.1/24"
    taps = plan.taps_of("vm1")
    assert [t.name for t in taps] == ["nwtbbbbbbbb", "nwtaaaaaaaa"]  # in NIC order
    assert {t.uid for t in taps} == {2_000_001}
    assert all(len(n) <= IFNAMSIZ for n in plan.device_names())
    assert plan.taps_of("other") == []


def test_plan_is_deterministic() -> None:
    assert host_plan(DESIRED, "nw") == host_plan(DESIRED, "nw")
    assert nft_commands(host_plan(DESIRED, "nw")) == nft_commands(host_plan(DESIRED, "nw"))


def test_an_empty_plan_removes_the_tables_and_adds_none() -> None:
    commands = nft_commands(host_plan(HostNetworkInput(), "nw"))
    assert [list(c)[0] for c in commands] == ["add", "delete", "add", "delete"]


def test_anti_spoofing_per_tap_and_host_input_dropped() -> None:
    text = str(nft_commands(host_plan(DESIRED, "nw")))
    assert "'right': '52:54:00:00:00:02'" in text and "'10.20.0.3', '0.0.0.0'" in text
    assert "masquerade" in text and "'10.20.0.0', 'len': 24" in text
    assert "10.30.0.0" not in text  # no NAT for the network without --nat


def test_dnsmasq_static_leases_only_router_only_with_nat() -> None:
    plan = host_plan(DESIRED, "nw")
    nat, isolated = plan.bridges
    argv = dnsmasq_argv(nat, Path("/state"))
    assert "--port=0" in argv and "--interface=nwbr4096" in argv
    assert "--dhcp-range=10.20.0.0,static,255.255.255.0,infinite" in argv
    assert "--dhcp-option=option:router,10.20.0.1" in argv
    assert "--dhcp-option=option:router" in dnsmasq_argv(isolated, Path("/state"))


@pytest.mark.parametrize("text", ["10.0.0.1/24", "10.0.0.0/8", "8.8.8.0/24", "10.0.2.0/24",
                                  "10.0.0.0/30", "nonsense"])
def test_bad_subnets(text: str) -> None:
    with pytest.raises(ValueError):
        parse_subnet(text)


def test_nic_request_parse() -> None:
    assert NicRequest.parse("lan") == NicRequest(network="lan")
    assert NicRequest.parse("lan,ip=10.20.0.5").ip == "10.20.0.5"
    with pytest.raises(Exception):
        NicRequest.parse("lan,mac=x")


def test_port_forwards_become_dnat_only_on_nat_networks() -> None:
    from virtpool.model.network import HostForward

    desired = DESIRED.model_copy(update={"forwards": (
        HostForward(vni=4096, host_port=8080, guest_port=80, address="10.20.0.3"),
        HostForward(vni=4097, host_port=8081, guest_port=80, address="10.30.0.2"))})
    plan = host_plan(desired, "nw")
    assert [(f.host_port, f.address) for f in plan.bridges[0].forwards] == [(8080, "10.20.0.3")]
    assert plan.bridges[1].forwards == ()  # not a NAT network: no DNAT
    text = str(nft_commands(plan))
    assert "'dnat': {'family': 'ip', 'addr': '10.20.0.3', 'port': 80}" in text
    assert "8081" not in text
    assert "'hook': 'prerouting'" in text and "'hook': 'output'" in text


def test_held_uplinks_forward_only_nat_replies_and_dnat() -> None:
    plan = host_plan(DESIRED, "nw")
    commands = nft_commands(plan, ("eth0",))
    restrict = [c for c in commands if "rule" in c.get("add", {})
                and "'eth0'" in str(c) and "'!'" in str(c)]
    assert len(restrict) == 1 and "['snat', 'dnat']" in str(restrict[0]) and "drop" in str(restrict[0])
    # Without NAT networks no uplink is held, and nothing of it appears.
    flat = host_plan(HostNetworkInput(networks=(DESIRED.networks[1],), nics=(NICS[1],)), "nw")
    assert "eth0" not in str(nft_commands(flat, ("eth0",)))
    assert plan.device_kinds() == {"bridge", "vxlan", "tuntap"} and flat.device_kinds() == {"bridge", "tuntap"}


def test_uplinks_leave_out_loopback_bridges_their_ports_and_our_devices() -> None:
    import re

    from virtpool.node.net.forwarding import uplinks

    class Link:
        def __init__(self, name: str, kind: str | None = None, master: int | None = None,
                     state: str = "UP") -> None:
            self.attrs = {"IFLA_IFNAME": name, "IFLA_MASTER": master, "IFLA_OPERSTATE": state,
                          "IFLA_LINKINFO": Info(kind) if kind else None}

        def get_attr(self, key: str) -> object:
            return self.attrs.get(key)

    class Info:
        def __init__(self, kind: str) -> None:
            self.kind = kind

        def get_attr(self, key: str) -> str:
            return self.kind

    links = [Link("lo"), Link("eth0"), Link("docker0", "bridge"), Link("veth1", "veth", master=5),
             Link("nwbr4096", "bridge"), Link("nwt12345678", "tun"), Link("wan", "veth"),
             Link("eth9", state="DOWN")]
    assert uplinks(links, re.compile(r"^nw(br|vx|t)[0-9a-f]+$")) == ("eth0", "wan")
