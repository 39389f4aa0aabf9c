"""Converge this host's network devices and rules to a ``HostPlan`` (idempotent).

Devices through netlink (pyroute2), rules through nftables' JSON API (``nft.py``), DHCP through
dnsmasq (``dhcp.py``). Only devices named with this host's prefix are touched, so an agent
restart, a missed message or a half-done earlier apply heals by running this again. ``netns``
applies inside a network namespace (a second "host" on one machine in the tests).
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
from virtpool.node.net import dhcp, nft
from virtpool.node.net.forwarding import Forwarding, uplinks
from virtpool.node.net.plan import VXLAN_PORT, BridgePlan, HostPlan, TapPlan, nft_commands
from virtpool.node.net.secgroups import secgroup_commands

log = logging.getLogger(__name__)
ZERO_MAC = "00:00:00:00:00:00"
BRIDGE_NF_SYSCTL = "net.bridge.bridge-nf-call-iptables"
# The kernel's name of each kind of device a plan needs, and the module that provides it.
DEVICE_KINDS = {"bridge": "bridge", "vxlan": "vxlan", "tuntap": "tuntap"}
MODULES = {"bridge": "bridge", "vxlan": "vxlan", "tuntap": "tun"}


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

    def converge(self, plan: HostPlan) -> None:
        """Make the host exactly ``plan``. What the host cannot do (a kernel without a device
        kind, no nftables) is found before anything changes; a failure half-way puts back the
        last plan this applier applied in full."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # dnsmasq re-reads its hosts file as the unprivileged user it drops to.
        self.state_dir.chmod(0o711)
        held = self._preflight(plan)
        try:
            self._converge(plan, held)
        except Exception:
            if self._applied is not None and plan != self._applied:
                try:
                    self._converge(self._applied, self._preflight(self._applied))
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    log.exception("putting the network plan back after a failed apply failed")
            raise
        self._applied = plan

    def _preflight(self, plan: HostPlan) -> tuple[str, ...]:
        """Ask the kernel for each kind of device the plan needs (a throwaway one) and check the
        whole ruleset with ``nft --check``: a host lacking either is told so, with nothing
        changed. Returns the uplinks whose forwarding a NAT network will hold."""
        try:
            with self._ipr() as ipr:
                for kind in sorted(plan.device_kinds()):
                    self._probe(ipr, kind)
                found = uplinks(ipr.get_links(), self._ours) if plan.nat else ()
        except NetlinkError as err:
            raise OperationFailed(f"the kernel refused a network device change: {err}",
                                  hint="virtual networks need root") from err
        held = tuple(n for n in found if self._forwarding.would_hold(n))
        nft.check(nft_commands(plan, held), netns=self.netns)
        return held

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

    def _converge(self, plan: HostPlan, held: tuple[str, ...]) -> None:
        try:
            with self._ipr() as ipr:
                wanted = plan.device_names()
                for name, index in self.devices(ipr).items():
                    if name not in wanted:
                        ipr.link("del", index=index)
                for bridge in plan.bridges:
                    self._bridge(ipr, bridge, plan.underlay)
        except NetlinkError as err:
            raise OperationFailed(f"the kernel refused a network device change: {err}",
                                  hint="virtual networks need root and the bridge, vxlan and "
                                       "tun kernel modules") from err
        for bridge in plan.bridges:
            self._forwarding.set_bridge(bridge.name, bridge.nat)
        if any(b.taps for b in plan.bridges):
            bridged_traffic_is_filtered(self.netns)
        # Rules first, then forwarding on: never a moment of forwarding without the rules. One
        # transaction: a NIC is never without its security groups, not even for a moment.
        nft.apply(nft_commands(plan, held) + secgroup_commands(plan), netns=self.netns)
        self._forwarding.hold(held)
        dhcp.stop_all_except({b.name for b in plan.bridges}, self.state_dir)
        for bridge in plan.bridges:
            dhcp.converge(bridge, self.state_dir, self.netns)

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

    def _bridge(self, ipr: Any, bridge: BridgePlan, underlay: str | None) -> None:
        index = _ensure(ipr, bridge.name, kind=self.kinds["bridge"])
        ipr.link("set", index=index, mtu=bridge.mtu)
        address, prefixlen = bridge.gateway.split("/")
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)
                if a["family"] == 2}
        for other, length in have - {(address, int(prefixlen))}:
            ipr.addr("del", index=index, address=other, prefixlen=length)
        if (address, int(prefixlen)) not in have:
            ipr.addr("add", index=index, address=address, prefixlen=int(prefixlen))
        ipr.link("set", index=index, state="up")
        if bridge.vxlan:
            self._vxlan(ipr, bridge, index, underlay)
        for tap in bridge.taps:
            self._tap(ipr, tap, index, bridge.mtu)

    def _vxlan(self, ipr: Any, bridge: BridgePlan, master: int, underlay: str | None) -> None:
        name = bridge.vxlan or ""
        options: dict[str, Any] = {"vxlan_id": bridge.vni, "vxlan_port": VXLAN_PORT,
                                   "vxlan_learning": 1}
        if underlay:
            options["vxlan_local"] = underlay
        index = _ensure(ipr, name, kind=self.kinds["vxlan"], **options)
        ipr.link("set", index=index, mtu=bridge.mtu, master=master, state="up")
        # Broadcast and unknown traffic goes to every peer (head-end replication): one all-zero
        # FDB entry per peer; entries of peers that left are removed.
        have = set()
        for entry in ipr.fdb("dump", ifindex=index):
            if entry.get_attr("NDA_LLADDR") == ZERO_MAC and entry.get_attr("NDA_DST"):
                have.add(entry.get_attr("NDA_DST"))
        for gone in have - set(bridge.peers):
            ipr.fdb("del", ifindex=index, lladdr=ZERO_MAC, dst=gone)
        for peer in set(bridge.peers) - have:
            ipr.fdb("append", ifindex=index, lladdr=ZERO_MAC, dst=peer)

    def _tap(self, ipr: Any, tap: TapPlan, master: int, mtu: int) -> None:
        owner = _tap_owner(self.netns, tap.name)
        if owner is not None and owner != (tap.uid if tap.uid is not None else -1):
            index = ipr.link_lookup(ifname=tap.name)
            if index:
                ipr.link("del", index=index[0])
        options: dict[str, Any] = {"mode": "tap"}
        if tap.uid is not None:
            # Only the VM's QEMU user may attach to it (TUNSETOWNER/TUNSETGROUP).
            options.update(uid=tap.uid, gid=tap.uid)
        index = _ensure(ipr, tap.name, kind=self.kinds["tuntap"], **options)
        ipr.link("set", index=index, mtu=mtu, master=master, state="up")


def bridged_traffic_is_filtered(netns: str | None) -> None:
    """Make bridged IPv4 pass the inet hooks (br_netfilter), where security groups filter it
    statefully (secgroups.py says why there); refuse when the host cannot."""
    argv = ["sysctl", "-q", "-w", f"{BRIDGE_NF_SYSCTL}=1"]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise OperationFailed(f"cannot filter bridged traffic: {done.stderr.strip()}",
                              hint="security groups need br_netfilter: `modprobe br_netfilter` "
                                   "as root, then try again")


def _ensure(ipr: Any, name: str, **options: Any) -> int:
    found = ipr.link_lookup(ifname=name)
    if found:
        return int(found[0])
    ipr.link("add", ifname=name, **options)
    return int(ipr.link_lookup(ifname=name)[0])


def _tap_owner(netns: str | None, name: str) -> int | None:
    """The uid a tap belongs to (-1: anyone), None when there is no such tap here."""
    if netns is not None:
        return None  # /sys shows the agent's own namespace; inside one, taps are made once
    try:
        return int(Path(f"/sys/class/net/{name}/owner").read_text().strip())
    except (OSError, ValueError):
        return None
