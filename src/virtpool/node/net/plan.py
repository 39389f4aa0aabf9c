"""Pure: what this host must have for the networks the control plane gave it.

From ``HostNetworkInput`` (data only) to device names, addresses, VXLAN peers, taps, nftables
rules and dnsmasq settings. Nothing here touches the host; ``apply.py`` converges to it.
Every name starts with the host's prefix (``virtpool up --net-prefix``), so the apply step can
tell its own devices from anyone else's, and all fit IFNAMSIZ (15 characters).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from virtpool.model.network import HostNetworkInput, gateway_of
from virtpool.model.secgroup import NicFirewall

IFNAMSIZ = 15
VXLAN_PORT = 4789


@dataclass(frozen=True)
class TapPlan:
    name: str
    vm_id: str
    position: int
    mac: str
    address: str
    uid: int | None  # None: any user may attach (an agent not running as root)
    firewall: NicFirewall | None = None  # its VM's security groups; None: the network's default


@dataclass(frozen=True)
class ForwardPlan:
    """``--port H:G`` of a VM on a NAT network: the host's TCP port H, DNAT to ADDRESS:G."""

    host_port: int
    address: str
    guest_port: int


@dataclass(frozen=True)
class BridgePlan:
    name: str
    vni: int
    gateway: str  # with its prefix length, e.g. 10.20.0.1/24
    subnet: str
    mtu: int
    nat: bool
    vxlan: str | None  # the VXLAN device when other hosts share the network
    peers: tuple[str, ...]
    taps: tuple[TapPlan, ...]
    leases: tuple[tuple[str, str], ...]  # (MAC, address) for dnsmasq's static leases
    forwards: tuple[ForwardPlan, ...] = ()


@dataclass(frozen=True)
class HostPlan:
    prefix: str
    underlay: str | None
    bridges: tuple[BridgePlan, ...] = field(default=())

    def device_names(self) -> set[str]:
        names: set[str] = set()
        for bridge in self.bridges:
            names.add(bridge.name)
            if bridge.vxlan:
                names.add(bridge.vxlan)
            names.update(t.name for t in bridge.taps)
        return names

    @property
    def nat(self) -> bool:
        return any(b.nat for b in self.bridges)

    def device_kinds(self) -> set[str]:
        """The kinds of device (netlink's names) this plan needs the kernel to make."""
        kinds = {"bridge"} if self.bridges else set()
        if any(b.vxlan for b in self.bridges):
            kinds.add("vxlan")
        if any(b.taps for b in self.bridges):
            kinds.add("tuntap")
        return kinds

    def taps_of(self, vm_id: str) -> list[TapPlan]:
        found = [t for b in self.bridges for t in b.taps if t.vm_id == vm_id]
        return sorted(found, key=lambda t: t.position)


def bridge_name(prefix: str, vni: int) -> str:
    return _fit(f"{prefix}br{vni}")


def vxlan_name(prefix: str, vni: int) -> str:
    return _fit(f"{prefix}vx{vni}")


def tap_name(prefix: str, nic_id: str) -> str:
    return _fit(f"{prefix}t{nic_id[:8]}")


def _fit(name: str) -> str:
    if len(name) > IFNAMSIZ:
        raise ValueError(f"device name '{name}' is longer than {IFNAMSIZ} characters")
    return name


def host_plan(desired: HostNetworkInput, prefix: str,
              uid_of_slot: Callable[[int], int | None] = lambda slot: None) -> HostPlan:
    """The devices this host must have: one bridge per network, a VXLAN device when it has
    peers, a tap per NIC (owned by the uid its VM's QEMU runs as)."""
    bridges = []
    for network in desired.networks:
        subnet = ipaddress.IPv4Network(network.subnet)
        nics = [n for n in desired.nics if n.vni == network.vni]
        taps = tuple(TapPlan(name=tap_name(prefix, n.nic_id), vm_id=n.vm_id, position=n.position,
                             mac=n.mac, address=n.address, uid=uid_of_slot(n.slot),
                             firewall=n.firewall)
                     for n in nics)
        bridges.append(BridgePlan(
            name=bridge_name(prefix, network.vni), vni=network.vni,
            gateway=f"{gateway_of(subnet)}/{subnet.prefixlen}", subnet=str(subnet),
            mtu=network.mtu, nat=network.nat,
            vxlan=vxlan_name(prefix, network.vni) if network.peers else None,
            peers=tuple(sorted(network.peers)), taps=taps,
            leases=tuple(sorted((t.mac, t.address) for t in taps)),
            forwards=tuple(ForwardPlan(f.host_port, f.address, f.guest_port)
                           for f in desired.forwards if f.vni == network.vni and network.nat)))
    return HostPlan(prefix=prefix, underlay=desired.underlay, bridges=tuple(bridges))


# -- nftables ---------------------------------------------------------------------------------


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field_: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field_}}


def nft_commands(plan: HostPlan, uplinks: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The whole ruleset of this host's networks, rebuilt in one transaction.

    * ``inet <p>host``: guests reach nothing on the host through their bridge but its DHCP
      server; the host forwards nothing between networks; NAT networks masquerade egress, and
      their VMs' ``--port`` forwards are DNAT to them.
    * ``uplinks``: the host's interfaces whose forwarding virtpool switched on for NAT (it was
      off): what arrives on them is forwarded only when it is a reply to a guest's
      masqueraded connection or a DNAT to a guest, as if forwarding were still off otherwise.
    * ``bridge <p>net``: anti-spoofing per tap: a NIC sends only from its own MAC and address.
    """
    host, net = f"{plan.prefix}host", f"{plan.prefix}net"
    bridges = [b.name for b in plan.bridges]
    commands: list[dict[str, Any]] = []
    # add-then-delete empties a table that may or may not exist, within the same transaction.
    for family, table in (("inet", host), ("bridge", net)):
        commands += [{"add": {"table": {"family": family, "name": table}}},
                     {"delete": {"table": {"family": family, "name": table}}}]
    if not plan.bridges:
        return commands
    ours = {"set": bridges}

    def chain(family: str, table: str, name: str, hook: str, prio: int,
              policy: str = "accept", kind: str = "filter") -> dict[str, Any]:
        return {"add": {"chain": {"family": family, "table": table, "name": name, "type": kind,
                                  "hook": hook, "prio": prio, "policy": policy}}}

    def rule(family: str, table: str, name: str, *expr: dict[str, Any]) -> dict[str, Any]:
        return {"add": {"rule": {"family": family, "table": table, "chain": name,
                                 "expr": list(expr)}}}

    commands.append({"add": {"table": {"family": "inet", "name": host}}})
    commands.append(chain("inet", host, "input", "input", -10))
    commands.append(rule("inet", host, "input", _match(_meta("iifname"), ours),
                         _match(_meta("l4proto"), "udp"),
                         _match(_payload("udp", "dport"), 67), {"accept": None}))
    # Replies to connections the host itself opened to a guest (a --port forward used from the
    # host); guests open none of their own to it.
    commands.append(rule("inet", host, "input", _match(_meta("iifname"), ours),
                         _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                         _match({"ct": {"key": "direction"}}, "reply"), {"accept": None}))
    commands.append(rule("inet", host, "input", _match(_meta("iifname"), ours),
                         {"counter": None}, {"drop": None}))
    commands.append(chain("inet", host, "forward", "forward", -10))
    if uplinks and plan.nat:
        commands.append(rule("inet", host, "forward", _match(_meta("iifname"), {"set": list(uplinks)}),
                             _match({"ct": {"key": "status"}}, ["snat", "dnat"], "!"),
                             {"counter": None}, {"drop": None}))
    for bridge in plan.bridges:
        # Hosts with br_netfilter (bridge-nf-call-iptables=1) pass bridged frames through this
        # hook too: VMs of one network reach each other (their security groups decide).
        commands.append(rule("inet", host, "forward", _match(_meta("iifname"), bridge.name),
                             _match(_meta("oifname"), bridge.name), {"accept": None}))
        if bridge.nat:
            commands.append(rule("inet", host, "forward", _match(_meta("iifname"), bridge.name),
                                 _match(_meta("oifname"), ours, "!="), {"accept": None}))
            commands.append(rule("inet", host, "forward", _match(_meta("oifname"), bridge.name),
                                 # "in": a bit of the mask ("==" would ask for both at once)
                                 _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                                 {"accept": None}))
            if bridge.forwards:
                commands.append(rule("inet", host, "forward", _match(_meta("oifname"), bridge.name),
                                     _match({"ct": {"key": "status"}}, "dnat", "in"),
                                     {"accept": None}))
    commands.append(rule("inet", host, "forward", _match(_meta("iifname"), ours), {"drop": None}))
    commands.append(rule("inet", host, "forward", _match(_meta("oifname"), ours), {"drop": None}))
    if any(b.nat for b in plan.bridges):
        commands.append(chain("inet", host, "postrouting", "postrouting", 100, kind="nat"))
        for bridge in plan.bridges:
            if bridge.nat:
                network = ipaddress.IPv4Network(bridge.subnet)
                commands.append(rule(
                    "inet", host, "postrouting",
                    _match(_payload("ip", "saddr"),
                           {"prefix": {"addr": str(network.network_address),
                                       "len": network.prefixlen}}),
                    _match(_meta("oifname"), bridge.name, "!="), {"masquerade": None}))
    forwards = [f for b in plan.bridges for f in b.forwards]
    if forwards:
        # From elsewhere (prerouting) and from the host itself (output; not to 127/8, which
        # the kernel does not route to another host).
        commands.append(chain("inet", host, "prerouting", "prerouting", -100, kind="nat"))
        commands.append(chain("inet", host, "output", "output", -100, kind="nat"))
        local = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
        not_loopback = _match(_payload("ip", "daddr"), {"prefix": {"addr": "127.0.0.0", "len": 8}}, "!=")
        for forward in forwards:
            to_guest = [_match(_payload("tcp", "dport"), forward.host_port),
                        {"dnat": {"family": "ip", "addr": forward.address, "port": forward.guest_port}}]
            commands.append(rule("inet", host, "prerouting", local, *to_guest))
            commands.append(rule("inet", host, "output", not_loopback, local, *to_guest))

    commands.append({"add": {"table": {"family": "bridge", "name": net}}})
    commands.append(chain("bridge", net, "prerouting", "prerouting", -200))
    for bridge in plan.bridges:
        for tap in bridge.taps:
            on_tap = _match(_meta("iifname"), tap.name)
            commands.append(rule("bridge", net, "prerouting", on_tap,
                                 _match(_payload("ether", "saddr"), tap.mac, "!="),
                                 {"counter": None}, {"drop": None}))
            # 0.0.0.0: a DHCP client's discover, before it has its address.
            commands.append(rule("bridge", net, "prerouting", on_tap,
                                 _match(_payload("ether", "type"), "ip"),
                                 _match(_payload("ip", "saddr"), {"set": [tap.address, "0.0.0.0"]},
                                        "!="),
                                 {"counter": None}, {"drop": None}))
            commands.append(rule("bridge", net, "prerouting", on_tap,
                                 _match(_payload("ether", "type"), "arp"),
                                 _match(_payload("arp", "saddr ip"), {"set": [tap.address, "0.0.0.0"]},
                                        "!="),
                                 {"counter": None}, {"drop": None}))
            # Nothing but IPv4 and ARP leaves a NIC (no IPv6 to spoof from, no other protocols).
            commands.append(rule("bridge", net, "prerouting", on_tap,
                                 _match(_payload("ether", "type"), {"set": ["ip", "arp"]}, "!="),
                                 {"drop": None}))
    return commands


# -- dnsmasq ----------------------------------------------------------------------------------


def dnsmasq_hosts(bridge: BridgePlan) -> str:
    """dnsmasq's --dhcp-hostsfile: one static lease per NIC, nothing else is handed out."""
    return "".join(f"{mac},{address}\n" for mac, address in bridge.leases)
