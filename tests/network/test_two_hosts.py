"""Two "hosts" on one machine: two network namespaces joined by a veth pair (the underlay),
each given the agent's own plan for one network (bridge + VXLAN to the other + a tap), applied
inside it by the agent's applier; one real VM per host, its QEMU attached to the tap of its
namespace. The VMs get their addresses from each host's dnsmasq and reach each other over VXLAN
(ping and TCP both ways). Tearing the plans down leaves no device, rule or dnsmasq."""

from __future__ import annotations

import asyncio
import subprocess

from tests.network.conftest import ADDRESSES, UNDERLAY, VNI, TwoHosts, guest


def test_vms_on_two_hosts_reach_each_other_over_vxlan(two_hosts: TwoHosts) -> None:
    namespaces, socks, prefix = two_hosts.namespaces, two_hosts.socks, two_hosts.prefix
    for i, sock in enumerate(socks):
        code, out = asyncio.run(guest(sock, ["sh", "-c", "ip -4 addr show eth0"]))
        assert f"inet {ADDRESSES[i]}/24" in out, out
    for i, sock in enumerate(socks):
        code, out = asyncio.run(guest(sock, ["ping", "-c", "2", "-W", "3", ADDRESSES[1 - i]]))
        assert code == 0, out
    # TCP: host b's VM listens, host a's connects, both ends get the other's words.
    asyncio.run(guest(socks[1], ["sh", "-c", "( echo from-b | nc -l -p 7000 >/tmp/got ) "
                                             "</dev/null >/dev/null 2>&1 &"]))
    code, out = asyncio.run(guest(socks[0], ["sh", "-c", f"echo from-a | nc -w 3 {ADDRESSES[1]} 7000"]))
    assert "from-b" in out
    code, out = asyncio.run(guest(socks[1], ["sh", "-c", "sleep 1; cat /tmp/got"]))
    assert "from-a" in out
    # The VXLAN device of each host carries the traffic to the other host's underlay address.
    fdb = subprocess.run(["ip", "netns", "exec", namespaces[0], "bridge", "fdb", "show", "dev",
                          f"{prefix}vx{VNI}"], capture_output=True, text=True).stdout
    assert f"dst {UNDERLAY[1]}" in fdb
