"""Converge this host's network devices and rules to a ``HostPlan`` (idempotent).

Devices through netlink (pyroute2), rules through nftables' JSON API (``nft.py``, by difference:
``rules.py``), DHCP through dnsmasq (``dhcp.py``). Only devices named with this host's prefix
are touched, so an agent restart, a missed message or a half-done earlier apply heals by running
this again. Each step reads what the host has and changes only what differs: a converge to the
state the host is in changes nothing (no device re-made or re-set, no rule re-added, no dnsmasq
restarted), and says so by returning no ``Change``. ``netns`` applies inside a network
namespace (a second "host" on one machine in the tests).
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from virtpool.model.errors import OperationFailed
from virtpool.node.net import dhcp, nft, rules
from virtpool.model.net_change import Change
from virtpool.node.net.forwarding import Forwarding, uplinks
from virtpool.node.net.plan import VXLAN_PORT, BridgePlan, HostPlan, TapPlan, nft_commands
from virtpool.node.net.secgroups import secgroup_commands

log = logging.getLogger(__name__)
ZERO_MAC = "00:00:00:00:00:00"
BRIDGE_NF_SYSCTL = "net.bridge.bridge-nf-call-iptables"
# The kernel's name of each kind of device a plan needs, and the module that provides it.
DEVICE_KINDS = {"bridge": "bridge", "vxlan": "vxlan", "tuntap": "tuntap"}
MODULES = {"bridge": "bridge", "vxlan": "vxlan", "tuntap": "tun"}
REPORTED_KINDS = {"tuntap": "tun"}  # the kind netlink reports of a device made as another
IFF_UP = 0x1
_RuleUpdate = tuple[list[dict[str, Any]], list[Change]]  # nft commands, and what they change


class NetworkApplier:
    """Applies plans for one prefix, keeping dnsmasq's files under ``state_dir``."""

    def __init__(self, prefix: str, state_dir: Path, netns: str | None = None,
                 kinds: Mapping[str, str] = DEVICE_KINDS) -> None:
        self.prefix = prefix
        self.state_dir = state_dir
        self.netns = netns
        self.kinds = kinds  # the kernel's device kinds: a test names one the kernel lacks
        self._ours = re.compile(rf"^{re.escape(prefix)}((br|vx|t)[0-9a-f]+|probe)$")
        self._forwarding = Forwarding(state_dir, netns)
        # The last plan applied in full by this process (None: not known since it started, as
        # after an agent restart, when running VMs' devices must never be rolled back).
        self._applied: HostPlan | None = None

    def _ipr(self) -> Any:
        return NetNS(self.netns) if self.netns else IPRoute()

    def converge(self, plan: HostPlan) -> list[Change]:
        """Make the host exactly ``plan``, changing only what differs from it, and return what
        changed (nothing when the host already is ``plan``, as after an agent restart). What
        the host cannot do (a kernel without a device kind, no nftables) is found before
        anything changes; a failure half-way puts back the last plan this applier applied in
        full."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # dnsmasq re-reads its hosts file as the unprivileged user it drops to.
        if self.state_dir.stat().st_mode & 0o777 != 0o711:
            self.state_dir.chmod(0o711)
        held, update = self._preflight(plan)
        try:
            changes = self._converge(plan, held, update)
        except Exception:
            if self._applied is not None and plan != self._applied:
                try:
                    self._converge(self._applied, *self._preflight(self._applied))
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    log.exception("putting the network plan back after a failed apply failed")
            raise
        where = self.netns or "this host"
        if not changes and self._applied is None:
            # The first converge since this process started (an agent restart): say that the
            # host already was as planned, once.
            log.info("network of %s: as planned already, nothing changed", where)
        for change in changes:
            log.info("network of %s: %s", where, change)
        self._applied = plan
        return changes

    def _preflight(self, plan: HostPlan) -> tuple[tuple[str, ...], _RuleUpdate]:
        """Ask the kernel for each kind of device the plan needs and this host has none of yet
        (a throwaway one), and check the nftables update with ``nft --check``: a host lacking
        either is told so, with nothing changed. Returns the uplinks whose forwarding a NAT
        network will hold and the update of the rules."""
        try:
            with self._ipr() as ipr:
                links = ipr.get_links()
                present = {_kind(link) for link in links
                           if self._ours.match(link.get_attr("IFLA_IFNAME") or "")}
                for kind in sorted(plan.device_kinds()):
                    if REPORTED_KINDS.get(self.kinds[kind], self.kinds[kind]) not in present:
                        self._probe(ipr, kind)
                found = uplinks(links, self._ours) if plan.nat else ()
        except NetlinkError as err:
            raise OperationFailed(f"the kernel refused a network device change: {err}",
                                  hint="virtual networks need root") from err
        held = tuple(n for n in found if self._forwarding.would_hold(n))
        wanted = nft_commands(plan, held) + secgroup_commands(plan)
        update = rules.changes_to(wanted, nft.list_ruleset(netns=self.netns))
        nft.check(update[0], netns=self.netns)
        return held, update

    def _probe(self, ipr: Any, kind: str) -> None:
        name = f"{self.prefix}probe"
        asked = self.kinds[kind]
        # The options of the kinds pyroute2 knows; a kind it does not know gets none.
        options: dict[str, Any] = {"tuntap": {"mode": "tap"},
                                   "vxlan": {"vxlan_id": 1, "vxlan_port": VXLAN_PORT}}.get(asked, {})
        for index in ipr.link_lookup(ifname=name):
            ipr.link("del", index=index)
        try:
            ipr.link("add", ifname=name, kind=asked, **options)
        except NetlinkError as err:
            raise OperationFailed(
                f"this host's kernel cannot make {kind} devices ({err.args[-1] if err.args else err})",
                hint=f"load the '{MODULES[kind]}' kernel module (modprobe {MODULES[kind]}) or run "
                     "VMs on virtual networks on a host that has it") from err
        for index in ipr.link_lookup(ifname=name):
            ipr.link("del", index=index)

    def _converge(self, plan: HostPlan, held: tuple[str, ...], update: _RuleUpdate) -> list[Change]:
        changes: list[Change] = []
        try:
            with self._ipr() as ipr:
                wanted = plan.device_names()
                for name, index in self.devices(ipr).items():
                    if name not in wanted:
                        ipr.link("del", index=index)
                        changes.append(Change("delete", "link", name))
                for bridge in plan.bridges:
                    changes += self._bridge(ipr, bridge, plan.underlay)
        except NetlinkError as err:
            raise OperationFailed(f"the kernel refused a network device change: {err}",
                                  hint="virtual networks need root and the bridge, vxlan and "
                                       "tun kernel modules") from err
        for bridge in plan.bridges:
            if self._forwarding.set_bridge(bridge.name, bridge.nat):
                changes.append(Change("set", "sysctl", f"{bridge.name} forwarding",
                                      str(int(bridge.nat))))
        if any(b.taps for b in plan.bridges) and bridged_traffic_is_filtered(self.netns):
            changes.append(Change("set", "sysctl", BRIDGE_NF_SYSCTL, "1"))
        # Rules first, then forwarding on: never a moment of forwarding without the rules. One
        # transaction: a NIC is never without its security groups, not even for a moment.
        commands, rule_changes = update
        nft.apply(commands, netns=self.netns)
        changes += rule_changes
        changes += [Change("set", "sysctl", f"{name} forwarding", value)
                    for name, value in self._forwarding.hold(held)]
        changes += [Change("stop", "dnsmasq", name)
                    for name in dhcp.stop_all_except({b.name for b in plan.bridges}, self.state_dir)]
        for bridge in plan.bridges:
            done = dhcp.converge(bridge, self.state_dir, self.netns)
            if done is not None:
                changes.append(Change(done, "dnsmasq", bridge.name))
        return changes

    def devices(self, ipr: Any = None) -> dict[str, int]:
        """This prefix's devices on the host: name -> index."""
        if ipr is None:
            with self._ipr() as own:
                return self.devices(own)
        found = {}
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name and self._ours.match(name):
                found[name] = link["index"]
        return found

    def _bridge(self, ipr: Any, bridge: BridgePlan, underlay: str | None) -> list[Change]:
        changes: list[Change] = []
        index = _ensure(ipr, changes, bridge.name, kind=self.kinds["bridge"])
        changes += _set_link(ipr, index, mtu=bridge.mtu)
        address, prefixlen = bridge.gateway.split("/")
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)
                if a["family"] == 2}
        for other, length in have - {(address, int(prefixlen))}:
            ipr.addr("del", index=index, address=other, prefixlen=length)
            changes.append(Change("delete", "address", bridge.name, f"{other}/{length}"))
        if (address, int(prefixlen)) not in have:
            ipr.addr("add", index=index, address=address, prefixlen=int(prefixlen))
            changes.append(Change("add", "address", bridge.name, bridge.gateway))
        changes += _set_link(ipr, index, up=True)
        if bridge.vxlan:
            changes += self._vxlan(ipr, bridge, index, underlay)
        for tap in bridge.taps:
            changes += self._tap(ipr, tap, index, bridge.mtu)
        return changes

    def _vxlan(self, ipr: Any, bridge: BridgePlan, master: int, underlay: str | None) -> list[Change]:
        name = bridge.vxlan or ""
        options: dict[str, Any] = {"vxlan_id": bridge.vni, "vxlan_port": VXLAN_PORT,
                                   "vxlan_learning": 1}
        if underlay:
            options["vxlan_local"] = underlay
        changes: list[Change] = []
        link = _link(ipr, name)
        if link is not None:
            data = _info_data(link)
            if (data.get("IFLA_VXLAN_ID"), data.get("IFLA_VXLAN_PORT"),
                    data.get("IFLA_VXLAN_LOCAL")) != (bridge.vni, VXLAN_PORT, underlay):
                ipr.link("del", index=link["index"])  # made for another VNI or underlay
                changes.append(Change("delete", "link", name, "another VNI, port or underlay"))
        index = _ensure(ipr, changes, name, kind=self.kinds["vxlan"], **options)
        changes += _set_link(ipr, index, mtu=bridge.mtu, master=master, up=True)
        # Broadcast and unknown traffic goes to every peer (head-end replication): one all-zero
        # FDB entry per peer; entries of peers that left are removed.
        have = set()
        for entry in ipr.fdb("dump", ifindex=index):
            if entry.get_attr("NDA_LLADDR") == ZERO_MAC and entry.get_attr("NDA_DST"):
                have.add(entry.get_attr("NDA_DST"))
        for gone in sorted(have - set(bridge.peers)):
            ipr.fdb("del", ifindex=index, lladdr=ZERO_MAC, dst=gone)
            changes.append(Change("delete", "fdb", name, gone))
        for peer in sorted(set(bridge.peers) - have):
            ipr.fdb("append", ifindex=index, lladdr=ZERO_MAC, dst=peer)
            changes.append(Change("add", "fdb", name, peer))
        return changes

    def _tap(self, ipr: Any, tap: TapPlan, master: int, mtu: int) -> list[Change]:
        changes: list[Change] = []
        link = _link(ipr, tap.name)
        owner = tap.uid if tap.uid is not None else -1
        if link is not None and _info_data(link).get("IFLA_TUN_OWNER", -1) != owner:
            ipr.link("del", index=link["index"])  # another VM's user may attach to it
            changes.append(Change("delete", "link", tap.name, "another owner"))
        options: dict[str, Any] = {"mode": "tap"}
        if tap.uid is not None:
            # Only the VM's QEMU user may attach to it (TUNSETOWNER/TUNSETGROUP).
            options.update(uid=tap.uid, gid=tap.uid)
        index = _ensure(ipr, changes, tap.name, kind=self.kinds["tuntap"], **options)
        return changes + _set_link(ipr, index, mtu=mtu, master=master, up=True)


def bridged_traffic_is_filtered(netns: str | None) -> bool:
    """Make bridged IPv4 pass the inet hooks (br_netfilter), where security groups filter it
    statefully (secgroups.py says why there); refuse when the host cannot. Whether it had to
    be switched on."""
    prefix = ["ip", "netns", "exec", netns] if netns is not None else []
    now = subprocess.run([*prefix, "sysctl", "-n", BRIDGE_NF_SYSCTL], capture_output=True,
                         text=True, timeout=30)
    if now.returncode == 0 and now.stdout.strip() == "1":
        return False
    done = subprocess.run([*prefix, "sysctl", "-q", "-w", f"{BRIDGE_NF_SYSCTL}=1"],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise OperationFailed(f"cannot filter bridged traffic: {done.stderr.strip()}",
                              hint="security groups need br_netfilter: `modprobe br_netfilter` "
                                   "as root, then try again")
    return True


def _ensure(ipr: Any, changes: list[Change], name: str, **options: Any) -> int:
    """The index of the device ``name``, made with ``options`` when there is none."""
    found = ipr.link_lookup(ifname=name)
    if found:
        return int(found[0])
    ipr.link("add", ifname=name, **options)
    changes.append(Change("add", "link", name, str(options.get("kind", ""))))
    return int(ipr.link_lookup(ifname=name)[0])


def _set_link(ipr: Any, index: int, *, mtu: int | None = None, master: int | None = None,
              up: bool = False) -> list[Change]:
    """Set what differs of the device's MTU, bridge and state, nothing else."""
    link = ipr.get_links(index)[0]
    differs: dict[str, Any] = {}
    if mtu is not None and link.get_attr("IFLA_MTU") != mtu:
        differs["mtu"] = mtu
    if master is not None and link.get_attr("IFLA_MASTER") != master:
        differs["master"] = master
    if up and not link["flags"] & IFF_UP:
        differs["state"] = "up"
    if not differs:
        return []
    ipr.link("set", index=index, **differs)
    detail = ", ".join(f"{k} {v}" for k, v in differs.items())
    return [Change("set", "link", link.get_attr("IFLA_IFNAME"), detail)]


def _link(ipr: Any, name: str) -> Any:
    found = ipr.link_lookup(ifname=name)
    return ipr.get_links(found[0])[0] if found else None


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def _info_data(link: Any) -> dict[str, Any]:
    """The kind's own attributes of a device (a VXLAN's VNI, a tap's owner ...)."""
    info = link.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    return dict(data["attrs"]) if data is not None else {}
