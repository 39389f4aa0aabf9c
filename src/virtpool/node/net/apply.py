"""Converge this host's network devices and rules to a ``HostPlan`` (idempotent).

Devices through netlink (pyroute2), rules through nftables' JSON API (``nft.py``), DHCP through
dnsmasq (``dhcp.py``). Only devices named with this host's prefix are touched, so an agent
restart, a missed message or a half-done earlier apply heals by running this again. ``netns``
applies inside a network namespace (a second "host" on one machine in the tests).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from virtpool.model.errors import OperationFailed
from virtpool.node.net import dhcp, nft
from virtpool.node.net.plan import VXLAN_PORT, BridgePlan, HostPlan, TapPlan, nft_commands
from virtpool.node.net.secgroups import secgroup_commands

ZERO_MAC = "00:00:00:00:00:00"
BRIDGE_NF_SYSCTL = "net.bridge.bridge-nf-call-iptables"


class NetworkApplier:
    """Applies plans for one prefix, keeping dnsmasq's files under ``state_dir``."""

    def __init__(self, prefix: str, state_dir: Path, netns: str | None = None) -> None:
        self.prefix = prefix
        self.state_dir = state_dir
        self.netns = netns
        self._ours = re.compile(rf"^{re.escape(prefix)}(br|vx|t)[0-9a-f]+$")

    def _ipr(self) -> Any:
        return NetNS(self.netns) if self.netns else IPRoute()

    def converge(self, plan: HostPlan) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # dnsmasq re-reads its hosts file as the unprivileged user it drops to.
        self.state_dir.chmod(0o711)
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
        if any(b.taps for b in plan.bridges):
            bridged_traffic_is_filtered(self.netns)
        # One transaction: a NIC is never without its security groups, not even for a moment.
        nft.apply(nft_commands(plan) + secgroup_commands(plan), netns=self.netns)
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
        index = _ensure(ipr, bridge.name, kind="bridge")
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
        index = _ensure(ipr, name, kind="vxlan", **options)
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
        index = _ensure(ipr, tap.name, kind="tuntap", **options)
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
