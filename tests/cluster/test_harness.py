"""The lab itself: namespaces with their own addresses and hostnames, reachable over the bridge
only, and a teardown that leaves no namespace, veth, process or file."""

from __future__ import annotations

import subprocess

from tests.cluster.harness import (
    BRIDGE,
    GATEWAY,
    HOST_NAMES,
    PROBE_PREFIX,
    PROBE_SUBNET,
    Lab,
    links,
    namespaces,
)


def run_in(lab: Lab, index: int, *argv: str) -> subprocess.CompletedProcess[str]:
    host = lab.hosts[index]
    return subprocess.run(host.argv(list(argv)), capture_output=True, text=True, timeout=30)


def test_each_host_has_its_own_namespace_address_and_hostname(lab: Lab) -> None:
    assert sorted(namespaces()) == HOST_NAMES
    assert sorted(links()) == sorted([BRIDGE, *(host.veth for host in lab.hosts)])
    for i, host in enumerate(lab.hosts):
        addrs = run_in(lab, i, "ip", "-o", "-4", "addr", "show")
        assert addrs.returncode == 0, addrs.stderr
        devices = {line.split()[1]: line.split()[3] for line in addrs.stdout.splitlines()}
        assert devices == {"lo": "127.0.0.1/8", host.peer: f"{host.address}/24"}
        named = run_in(lab, i, "hostname")
        assert named.stdout.strip() == host.name


def test_hosts_reach_each_other_and_the_bridge_and_a_cut_link_stops_it(lab: Lab) -> None:
    def ping(index: int, address: str) -> bool:
        return run_in(lab, index, "ping", "-c", "1", "-W", "2", address).returncode == 0

    h1, h2, h3 = lab.hosts
    assert ping(0, h2.address) and ping(1, h3.address) and ping(2, GATEWAY)
    h2.cut()
    try:
        assert not ping(0, h2.address) and not ping(1, GATEWAY)
        assert ping(0, h3.address)  # the others still reach each other
    finally:
        h2.heal()
    assert ping(0, h2.address)


def test_a_lab_torn_down_leaves_no_namespace_veth_process_or_file(lab: Lab) -> None:
    """A second lab beside the session's (its own prefix and subnet), with a process in each
    namespace and files in its dir, is counted after its teardown; the session's is untouched."""
    probe = Lab(2, prefix=PROBE_PREFIX, subnet=PROBE_SUBNET).setup()
    try:
        for host in probe.hosts:
            (host.data_dir / "state").write_text("a file of the lab")
            probe.start(["sh", "-c", "sleep 600; :", str(host.data_dir)], probe.root / f"{host.name}.log",
                        host)
        before = probe.leftovers()
        assert sorted(before["namespaces"]) == [f"{PROBE_PREFIX}-h1", f"{PROBE_PREFIX}-h2"]
        assert sorted(before["links"]) == [f"{PROBE_PREFIX}br0", f"{PROBE_PREFIX}v1",
                                           f"{PROBE_PREFIX}v2"]
        assert len(before["processes"]) >= 2 and before["files"] == [str(probe.root)]
    finally:
        probe.teardown()
    assert probe.leftovers() == {"namespaces": [], "links": [], "processes": [], "files": []}
    assert sorted(namespaces()) == HOST_NAMES
    assert BRIDGE in links()
