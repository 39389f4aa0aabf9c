"""Pure: the nftables rules of security groups for the NICs of a ``HostPlan``.

Two tables of their own, so that they compose with ``plan.nft_commands`` (a packet must pass
every base chain of a hook: these only ever drop, never let through what the host's tables
drop):

* ``inet <p>sg``: the stateful filter. This kernel has no conntrack in the bridge family
  (CONFIG_NF_CONNTRACK_BRIDGE), so the filter sits where br_netfilter hands bridged IPv4 to the
  inet hooks (the agent makes sure it does: ``apply.py``). There a frame's tap is not known,
  but its addresses are: anti-spoofing (``bridge <p>net``) pins each tap's source address, and
  ``bridge <p>sg`` below lets a tap receive only packets for its own address, so "to or from
  address A on bridge B" is "to or from that tap". Per NIC: a chain of ingress rules, and one
  of egress rules when its groups restrict egress, reached through a verdict map of the
  bridge's addresses. Allowed is ``return`` (the other side's chain still has its say);
  otherwise ``drop``. Replies of allowed connections pass first.
  The ``output`` hook covers what the host itself sends into a bridge: only DHCP replies and
  replies pass, unless a NIC's rules allow more; the host is not "the same network".
* ``bridge <p>sg``: per tap, only IPv4 packets to its own address, broadcast or multicast
  leave the bridge to it.

A NIC of a VM in no group (``firewall`` None) keeps the default: ingress from the same network
(its bridge: local taps, the VXLAN from other hosts) and port forwards (DNAT), nothing else.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from virtpool.model.secgroup import HostRule
from virtpool.node.net.plan import BridgePlan, HostPlan, TapPlan, _match, _meta, _payload

DHCP_SERVER_PORT, DHCP_CLIENT_PORT = 67, 68


def table_name(prefix: str) -> str:
    return f"{prefix}sg"


def secgroup_commands(plan: HostPlan) -> list[dict[str, Any]]:
    """The security-group tables of ``plan``, rebuilt from scratch in the caller's transaction
    (an empty plan removes them)."""
    name = table_name(plan.prefix)
    commands: list[dict[str, Any]] = []
    for family in ("inet", "bridge"):
        commands += [{"add": {"table": {"family": family, "name": name}}},
                     {"delete": {"table": {"family": family, "name": name}}}]
    bridges = [b for b in plan.bridges if b.taps]
    if not bridges:
        return commands
    inet = _Table("inet", name)
    inet.add_table()
    for bridge in bridges:
        for tap in bridge.taps:
            inet.add_chain(_ingress_chain(tap))
            for rule in _ingress_rules(bridge, tap):
                inet.rule(_ingress_chain(tap), *rule)
            if tap.firewall is not None and tap.firewall.egress_restricted:
                inet.add_chain(_egress_chain(tap))
                for rule in _rules(tap.firewall.egress, "daddr"):
                    inet.rule(_egress_chain(tap), *rule, {"return": None})
                inet.rule(_egress_chain(tap), {"counter": None}, {"drop": None})
    replies = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
    inet.add_chain("forward", hook="forward")
    inet.rule("forward", replies, {"accept": None})
    for bridge in bridges:
        inet.rule("forward", _match(_meta("oifname"), bridge.name),
                  _address_map("daddr", bridge.taps, _ingress_chain))
        restricted = [t for t in bridge.taps if t.firewall is not None and t.firewall.egress_restricted]
        if restricted:
            inet.rule("forward", _match(_meta("iifname"), bridge.name),
                      _address_map("saddr", restricted, _egress_chain))
    inet.add_chain("output", hook="output")
    inet.rule("output", replies, {"accept": None})
    ours = {"set": [b.name for b in bridges]}
    inet.rule("output", _match(_meta("oifname"), ours),
              _match(_payload("udp", "sport"), DHCP_SERVER_PORT),
              _match(_payload("udp", "dport"), DHCP_CLIENT_PORT), {"accept": None})
    for bridge in bridges:
        inet.rule("output", _match(_meta("oifname"), bridge.name),
                  _address_map("daddr", bridge.taps, _ingress_chain))

    tap_table = _Table("bridge", name)
    tap_table.add_table()
    tap_table.add_chain("postrouting", hook="postrouting")
    for bridge in bridges:
        broadcast = str(ipaddress.IPv4Network(bridge.subnet).broadcast_address)
        for tap in bridge.taps:
            tap_table.rule("postrouting", _match(_meta("oifname"), tap.name),
                           _match(_payload("ether", "type"), "ip"),
                           _match(_payload("ip", "daddr"),
                                  {"set": [tap.address, broadcast, "255.255.255.255",
                                           {"prefix": {"addr": "224.0.0.0", "len": 4}}]}, "!="),
                           {"counter": None}, {"drop": None})
    return commands + inet.commands + tap_table.commands


def _ingress_rules(bridge: BridgePlan, tap: TapPlan) -> list[list[dict[str, Any]]]:
    rules: list[list[dict[str, Any]]] = []
    if tap.firewall is None:
        # The default: the same network (frames bridged in from its taps or VXLAN; what the
        # host sends has no input interface) and the VM's own port forwards.
        rules.append([_match(_meta("iifname"), bridge.name), {"return": None}])
        rules.append([_match({"ct": {"key": "status"}}, "dnat", "in"), {"return": None}])
    else:
        rules += [[*r, {"return": None}] for r in _rules(tap.firewall.ingress, "saddr")]
    rules.append([{"counter": None}, {"drop": None}])
    return rules


def _rules(rules: tuple[HostRule, ...], remote_field: str) -> list[list[dict[str, Any]]]:
    """The matches of each rule (the caller adds the verdict); a rule whose other side is a
    group without NICs matches nothing and is left out."""
    compiled = []
    for rule in rules:
        if rule.remotes is not None and not rule.remotes:
            continue
        matches: list[dict[str, Any]] = []
        if rule.port_min is not None:
            ports: Any = (rule.port_min if rule.port_min == rule.port_max
                          else {"range": [rule.port_min, rule.port_max]})
            matches.append(_match(_payload(rule.proto, "dport"), ports))
        else:
            matches.append(_match(_meta("l4proto"), rule.proto))
        if rule.remotes is not None:
            matches.append(_match(_payload("ip", remote_field),
                                  {"set": [_prefix(r) for r in sorted(set(rule.remotes))]}))
        compiled.append(matches)
    return compiled


def _prefix(cidr: str) -> Any:
    network = ipaddress.IPv4Network(cidr)
    if network.prefixlen == 32:
        return str(network.network_address)
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def _ingress_chain(tap: TapPlan) -> str:
    return f"in_{tap.name}"


def _egress_chain(tap: TapPlan) -> str:
    return f"out_{tap.name}"


def _address_map(field: str, taps: Any, chain: Any) -> dict[str, Any]:
    return {"vmap": {"key": _payload("ip", field),
                     "data": {"set": [[t.address, {"jump": {"target": chain(t)}}] for t in taps]}}}


class _Table:
    """nft JSON commands for one table."""

    def __init__(self, family: str, name: str) -> None:
        self.family, self.name = family, name
        self.commands: list[dict[str, Any]] = []

    def add_table(self) -> None:
        self.commands.append({"add": {"table": {"family": self.family, "name": self.name}}})

    def add_chain(self, chain: str, hook: str | None = None) -> None:
        body: dict[str, Any] = {"family": self.family, "table": self.name, "name": chain}
        if hook is not None:
            body.update(type="filter", hook=hook, prio=0, policy="accept")
        self.commands.append({"add": {"chain": body}})

    def rule(self, chain: str, *expr: dict[str, Any]) -> None:
        self.commands.append({"add": {"rule": {"family": self.family, "table": self.name,
                                               "chain": chain, "expr": list(expr)}}})
