"""The security-group compiler (pure): what its nftables rules let through, read by a small
evaluator of the expressions it emits, packet by packet; and the rule specs' checks."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from virtpool.model.network import HostNetwork, HostNetworkInput, HostNic
from virtpool.model.secgroup import HostRule, NicFirewall, RuleSpec, parse_ports
from virtpool.node.net.plan import host_plan
from virtpool.node.net.secgroups import secgroup_commands

BRIDGE, OTHER_BRIDGE, UPLINK = "nwbr4096", "nwbr4097", "eth0"
A, B, C = "10.20.0.2", "10.20.0.3", "10.20.0.4"  # C: a NIC on another host (VXLAN)


def nic(name: str, address: str, firewall: NicFirewall | None = None, vni: int = 4096) -> HostNic:
    return HostNic(nic_id=name * 8, vm_id=f"vm-{name}", position=0, vni=vni,
                   mac=f"52:54:00:00:00:0{ord(name) % 10}", address=address, slot=ord(name),
                   firewall=firewall)


def ruleset(*nics: HostNic) -> list[dict[str, Any]]:
    desired = HostNetworkInput(networks=(HostNetwork(vni=4096, subnet="10.20.0.0/24"),
                                         HostNetwork(vni=4097, subnet="10.20.0.0/24")),
                               nics=nics)
    return secgroup_commands(host_plan(desired, "nw"))


@dataclass
class Packet:
    iif: str  # "" for what the host itself sends
    oif: str
    saddr: str
    daddr: str
    proto: str = "tcp"
    dport: int | None = 7000
    sport: int = 20000  # a client port in a pure packet; nothing binds it
    state: str = "new"
    status: tuple[str, ...] = ()


class Evaluator:
    """Runs a packet through the base chains of one hook of the compiled inet table."""

    def __init__(self, commands: list[dict[str, Any]]) -> None:
        self.chains: dict[str, list[list[dict[str, Any]]]] = {}
        self.hooks: dict[str, str] = {}
        for command in commands:
            body = command.get("add", {})
            if "chain" in body and body["chain"]["family"] == "inet":
                self.chains[body["chain"]["name"]] = []
                if "hook" in body["chain"]:
                    self.hooks[body["chain"]["hook"]] = body["chain"]["name"]
            elif "rule" in body and body["rule"]["family"] == "inet":
                self.chains[body["rule"]["chain"]].append(body["rule"]["expr"])

    def verdict(self, hook: str, packet: Packet) -> str:
        if hook not in self.hooks:
            return "accept"
        return self._run(self.hooks[hook], packet) or "accept"  # policy accept

    def _run(self, chain: str, packet: Packet) -> str | None:
        for expr in self.chains[chain]:
            outcome = self._rule(expr, packet)
            if outcome == "return":
                return None
            if outcome in ("accept", "drop"):
                return outcome
        return None

    def _rule(self, expr: list[dict[str, Any]], packet: Packet) -> str | None:
        for item in expr:
            if "match" in item:
                if not self._matches(item["match"], packet):
                    return None
            elif "vmap" in item:
                key = self._value(item["vmap"]["key"], packet)
                for element, verdict in item["vmap"]["data"]["set"]:
                    if element == key:
                        outcome = self._run(verdict["jump"]["target"], packet)
                        if outcome is not None:
                            return outcome
                        break
            elif "counter" in item:
                continue
            else:
                return next(iter(item))  # accept, drop, return
        return None

    def _value(self, left: dict[str, Any], packet: Packet) -> Any:
        if "meta" in left:
            return {"iifname": packet.iif, "oifname": packet.oif,
                    "l4proto": packet.proto}[left["meta"]["key"]]
        if "ct" in left:
            return packet.state if left["ct"]["key"] == "state" else packet.status
        field = left["payload"]
        if field["protocol"] == "ip":
            return packet.saddr if field["field"] == "saddr" else packet.daddr
        if field["protocol"] != packet.proto:
            return None  # a tcp/udp port match implies its protocol
        return packet.dport if field["field"] == "dport" else packet.sport

    def _matches(self, match: dict[str, Any], packet: Packet) -> bool:
        value = self._value(match["left"], packet)
        if value is None:
            return False
        right = match["right"]
        if match["op"] == "in":
            wanted = right if isinstance(right, list) else [right]
            found = value if isinstance(value, tuple) else (value,)
            return any(w in found for w in wanted)
        hit = self._contains(right, value)
        return hit if match["op"] == "==" else not hit

    def _contains(self, right: Any, value: Any) -> bool:
        if isinstance(right, dict) and "set" in right:
            return any(self._contains(r, value) for r in right["set"])
        if isinstance(right, dict) and "range" in right:
            return right["range"][0] <= value <= right["range"][1]
        if isinstance(right, dict) and "prefix" in right:
            prefix = right["prefix"]
            return ipaddress.IPv4Address(value) in ipaddress.IPv4Network(f"{prefix['addr']}/{prefix['len']}")
        return bool(right == value)


def between(src: str, dst: str, **kw: Any) -> Packet:
    return Packet(iif=BRIDGE, oif=BRIDGE, saddr=src, daddr=dst, **kw)


def test_without_groups_the_same_network_gets_in_and_nothing_else() -> None:
    rules = Evaluator(ruleset(nic("a", A), nic("b", B)))
    assert rules.verdict("forward", between(A, B)) == "accept"
    assert rules.verdict("forward", between(C, B, proto="udp", dport=53)) == "accept"  # over VXLAN
    # From outside the network: routed in from the uplink, or sent by the host itself.
    assert rules.verdict("forward", Packet(iif=UPLINK, oif=BRIDGE, saddr="192.0.2.9", daddr=B)) == "drop"
    assert rules.verdict("output", Packet(iif="", oif=BRIDGE, saddr="10.20.0.1", daddr=B)) == "drop"
    # ... but port forwards (DNAT), DHCP replies and replies of the NIC's own connections pass.
    assert rules.verdict("forward", Packet(iif=UPLINK, oif=BRIDGE, saddr="192.0.2.9", daddr=B,
                                           status=("dnat",))) == "accept"
    assert rules.verdict("output", Packet(iif="", oif=BRIDGE, saddr="10.20.0.1", daddr=B,
                                          proto="udp", sport=67, dport=68)) == "accept"
    assert rules.verdict("forward", Packet(iif=UPLINK, oif=BRIDGE, saddr="192.0.2.9", daddr=B,
                                           state="established")) == "accept"
    # Egress is open: B reaches out through NAT.
    assert rules.verdict("forward", Packet(iif=BRIDGE, oif=UPLINK, saddr=B, daddr="192.0.2.9")) == "accept"


def test_a_group_replaces_the_default_with_its_rules() -> None:
    web = NicFirewall(ingress=(HostRule(proto="tcp", port_min=7000, port_max=7000),
                               HostRule(proto="udp", port_min=5000, port_max=5010,
                                        remotes=("10.20.0.2/32",))))
    rules = Evaluator(ruleset(nic("a", A), nic("b", B, web)))
    assert rules.verdict("forward", between(A, B, dport=7000)) == "accept"
    assert rules.verdict("forward", between(A, B, dport=7001)) == "drop"
    assert rules.verdict("forward", between(A, B, proto="icmp", dport=None)) == "drop"
    assert rules.verdict("forward", between(A, B, proto="udp", dport=5005)) == "accept"
    assert rules.verdict("forward", between(C, B, proto="udp", dport=5005)) == "drop"  # not from A
    assert rules.verdict("forward", between(A, B, proto="udp", dport=5011)) == "drop"
    # Anyone, routed in too: the rule names no other side.
    assert rules.verdict("forward", Packet(iif=UPLINK, oif=BRIDGE, saddr="192.0.2.9", daddr=B)) == "accept"
    # A rule allows new connections; replies of B's own pass whatever the rules.
    assert rules.verdict("forward", between(A, B, dport=None, proto="icmp", state="established")) == "accept"
    # A keeps its default; B's egress is open (no egress rule).
    assert rules.verdict("forward", between(B, A, dport=22)) == "accept"


def test_egress_rules_restrict_egress_and_both_sides_have_their_say() -> None:
    locked = NicFirewall(ingress=(), egress=(HostRule(proto="tcp", port_min=80, port_max=80,
                                                      remotes=("10.20.0.0/24",)),),
                         egress_restricted=True)
    rules = Evaluator(ruleset(nic("a", A), nic("b", B, locked)))
    assert rules.verdict("forward", between(B, A, dport=80)) == "accept"
    assert rules.verdict("forward", between(B, A, dport=81)) == "drop"
    assert rules.verdict("forward", Packet(iif=BRIDGE, oif=UPLINK, saddr=B, daddr="192.0.2.9", dport=80)) == "drop"
    # B's egress allows port 80 to A, but A's ingress must too: a group on A without rules says no.
    closed = NicFirewall()
    rules = Evaluator(ruleset(nic("a", A, closed), nic("b", B, locked)))
    assert rules.verdict("forward", between(B, A, dport=80)) == "drop"


def test_a_group_with_no_members_on_the_other_side_lets_nothing_in() -> None:
    empty = NicFirewall(ingress=(HostRule(proto="tcp", port_min=7000, port_max=7000, remotes=()),))
    rules = Evaluator(ruleset(nic("a", A), nic("b", B, empty)))
    assert rules.verdict("forward", between(A, B, dport=7000)) == "drop"
    member = NicFirewall(ingress=(HostRule(proto="tcp", port_min=7000, port_max=7000,
                                           remotes=("10.20.0.2/32",)),))
    rules = Evaluator(ruleset(nic("a", A), nic("b", B, member)))
    assert rules.verdict("forward", between(A, B, dport=7000)) == "accept"


def test_the_same_address_on_another_network_is_another_nic() -> None:
    # Projects may reuse a subnet (on another bridge): B's rules apply to B's bridge only.
    rules = Evaluator(ruleset(nic("b", B, NicFirewall()), nic("d", B, vni=4097)))
    assert rules.verdict("forward", Packet(iif=OTHER_BRIDGE, oif=OTHER_BRIDGE, saddr=A,
                                           daddr=B)) == "accept"
    assert rules.verdict("forward", between(A, B)) == "drop"


def test_each_tap_receives_only_its_own_address_broadcast_and_multicast() -> None:
    commands = ruleset(nic("a", A), nic("b", B))
    bridge_rules = [c["add"]["rule"] for c in commands
                    if "rule" in c.get("add", {}) and c["add"]["rule"]["family"] == "bridge"]
    assert len(bridge_rules) == 2
    wanted = bridge_rules[1]["expr"][2]["match"]
    assert bridge_rules[1]["expr"][0]["match"]["right"] == "nwtbbbbbbbb"
    assert wanted["op"] == "!=" and wanted["right"]["set"][:3] == [B, "10.20.0.255", "255.255.255.255"]


def test_an_empty_plan_removes_both_tables_and_the_output_is_deterministic() -> None:
    commands = ruleset()
    assert [next(iter(c)) for c in commands] == ["add", "delete", "add", "delete"]
    assert {c["delete"]["table"]["name"] for c in commands if "delete" in c} == {"nwsg"}
    fw = NicFirewall(ingress=(HostRule(proto="icmp"),))
    assert ruleset(nic("a", A, fw), nic("b", B)) == ruleset(nic("a", A, fw), nic("b", B))


@pytest.mark.parametrize(("fields", "words"), [
    ({"proto": "gre"}, "proto"),
    ({"proto": "tcp", "port_min": 0}, "out of range"),
    ({"proto": "tcp", "port_min": 10, "port_max": 9}, "runs backwards"),
    ({"proto": "icmp", "port_min": 8}, "icmp has no ports"),
    ({"proto": "tcp", "remote_cidr": "10.0.0.1/8"}, "host bits"),
    ({"proto": "tcp", "remote_cidr": "10.0.0.0/8", "remote_group": "web"}, "not both"),
    ({"proto": "tcp", "remote_group": "Not A Name"}, "not a valid security group name"),
])
def test_bad_rule_specs_say_what_is_wrong(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as refused:
        RuleSpec(direction="ingress", **fields)
    assert words in str(refused.value)


def test_ports_are_read_as_one_port_or_a_range() -> None:
    assert parse_ports("22") == (22, 22) and parse_ports("8000-8100") == (8000, 8100)
    assert RuleSpec(direction="egress", proto="udp", port_min=53).port_max == 53
    for text in ("", "x", "1-", "-5", "65536", "5-4"):
        with pytest.raises(ValueError):
            parse_ports(text)
