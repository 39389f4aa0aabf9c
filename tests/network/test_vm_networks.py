"""Virtual networks with real VMs on one host: two VMs reach each other (ping, TCP both ways)
by the addresses IPAM gave them over DHCP; a VM of another project on the very same subnet does
not, nor does a VM of the same project on another of its networks; the host is not reachable
through the bridge; a spoofed source is dropped; addresses
survive a restart of the VM and traffic survives a restart of the platform; deleting leaves
no device, rule, DHCP server or NIC row behind."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import psutil
import pytest

from tests.conftest import Server, wait_for
from tests.network.conftest import prefix_of
from virtpool.sdk import APIError, Client

SUBNET = "10.61.0.0/24"
GATEWAY = "10.61.0.1"
OTHER_SUBNET, OTHER_GATEWAY = "10.64.0.0/24", "10.64.0.1"  # the project's second network
PORT = 7010  # listeners kept by the isolation case (tcp_exchange uses 7000)


def our_devices(server: Server) -> list[str]:
    prefix = prefix_of(server)
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = [line.split(": ")[1].split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith((f"{prefix}br", f"{prefix}t", f"{prefix}vx"))]


def our_tables(server: Server) -> list[str]:
    prefix = prefix_of(server)
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.endswith((f" {prefix}host", f" {prefix}net"))]


def our_dnsmasqs(server: Server) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "dnsmasq" and any(str(server.data_dir) in a for a in cmdline):
            found.append(proc.info["pid"])
    return found


def sh(api: Client, vm: str, script: str, timeout: float = 60) -> tuple[int, str]:
    result = api.exec(vm, ["sh", "-c", script], timeout=timeout)
    return result.exit_code, result.stdout + result.stderr


def pings(api: Client, vm: str, address: str) -> bool:
    return sh(api, vm, f"ping -c 2 -W 3 {address}")[0] == 0


def connects(api: Client, client: str, address: str, port: int) -> bool:
    """Whether ``client`` gets the listener's answer (a few tries: a listener restarts)."""
    for _ in range(5):
        _, out = sh(api, client, f"echo hi | nc -w 3 {address} {port}")
        if f"-{port}" in out:
            return True
        if "refused" not in out:
            return False  # timed out: dropped on the way
    raise AssertionError(f"no listener at {address}:{port}: {out}")


def dropped(api: Client, client: str, address: str, port: int) -> bool:
    """Whether a connection from ``client`` times out (nothing came back, not even a reset)."""
    _, out = sh(api, client, f"echo hi | nc -w 3 {address} {port}; echo rc=$?")
    assert "refused" not in out, f"nothing listens at {address}:{port}: the probe proves nothing"
    return f"-{port}" not in out and "rc=0" not in out


def tcp_exchange(api: Client, server_vm: str, server_ip: str, client_vm: str) -> tuple[str, str]:
    """A TCP connection from ``client_vm`` to ``server_vm``: (what the client got, what the
    server got)."""
    sh(api, server_vm, f"rm -f /tmp/got; ( echo from-{server_vm} | nc -l -p 7000 >/tmp/got ) "
                       "</dev/null >/dev/null 2>&1 &")
    got_client = ""
    for _ in range(10):
        code, got_client = sh(api, client_vm, f"echo from-{client_vm} | nc -w 3 {server_ip} 7000")
        if f"from-{server_vm}" in got_client:
            break
    _, got_server = sh(api, server_vm, "sleep 1; cat /tmp/got")
    return got_client, got_server


@pytest.fixture(scope="module")
def lan(net_server: Server) -> Iterator[dict[str, str]]:
    """Network 'lan' with VMs a (made by the CLI) and b (by the SDK), both running."""
    api = net_server.api()
    made = net_server.cli("network", "create", "lan", "--subnet", SUBNET)
    assert made.returncode == 0, made.stderr
    cli = net_server.cli("vm", "create", "a", "--network", "lan", "--memory", "128M",
                         "--start", "--wait", "--wait-timeout", "300")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    api.create_vm("b", networks=["lan,ip=10.61.0.50"], memory_mib=128, start=True)
    assert api.wait_vm("b", timeout=300).state == "running"
    addresses = {vm: api.vm(vm).nics[0].address for vm in ("a", "b")}
    yield addresses


def test_vms_get_their_ipam_address_by_dhcp_and_show_it(net_server: Server, lan: dict[str, str]) -> None:
    api = net_server.api()
    assert lan["b"] == "10.61.0.50"
    assert lan["a"] == "10.61.0.2"  # the first free address after the gateway
    for vm in ("a", "b"):
        nic = api.vm(vm).nics[0]
        assert nic.network == "lan" and nic.mac.startswith("52:54:00:")
        _, shown = sh(api, vm, "ip -4 addr show eth0; cat /sys/class/net/eth0/address")
        assert f"inet {lan[vm]}/24" in shown and nic.mac in shown
    show = net_server.cli("vm", "show", "a")
    assert lan["a"] in show.stdout and "lan" in show.stdout
    listing = net_server.cli("vm", "list")
    assert lan["a"] in listing.stdout and lan["b"] in listing.stdout
    taps = [d for d in our_devices(net_server) if d.startswith(f"{prefix_of(net_server)}t")]
    assert len(taps) == 2
    for tap in taps:  # only the VM's own QEMU user may attach to its tap
        owner = int(open(f"/sys/class/net/{tap}/owner").read())
        assert owner >= 2_000_000


def test_two_vms_ping_and_exchange_tcp_both_ways(net_server: Server, lan: dict[str, str]) -> None:
    api = net_server.api()
    assert pings(api, "a", lan["b"]) and pings(api, "b", lan["a"])
    client_got, server_got = tcp_exchange(api, "b", lan["b"], "a")
    assert "from-b" in client_got and "from-a" in server_got
    client_got, server_got = tcp_exchange(api, "a", lan["a"], "b")
    assert "from-a" in client_got and "from-b" in server_got


def test_tap_counters_are_what_the_guests_sent_and_received(net_server: Server, lan: dict[str, str]) -> None:
    # The host's counters of each tap, swapped to the guest's side: 20 pings of 1000 bytes from
    # a to b are at least 20 kB out of a and into b (and as much back).
    api = net_server.api()
    before = {vm: api.vm_stats(vm) for vm in ("a", "b")}
    assert all(s.net_rx_bytes is not None and s.net_tx_packets is not None for s in before.values()), before
    code, out = sh(api, "a", f"ping -c 20 -i 0.05 -W 2 -s 1000 {lan['b']}")
    assert code == 0, out
    after = {vm: api.vm_stats(vm) for vm in ("a", "b")}
    assert after["a"].net_tx_bytes >= before["a"].net_tx_bytes + 20_000  # type: ignore[operator]
    assert after["b"].net_rx_bytes >= before["b"].net_rx_bytes + 20_000  # type: ignore[operator]
    assert after["b"].net_tx_bytes >= before["b"].net_tx_bytes + 20_000  # type: ignore[operator]
    assert after["a"].net_rx_packets >= before["a"].net_rx_packets + 20  # type: ignore[operator]
    # The guest's own count agrees with its tap's (what the host put in is what it got).
    _, guest_rx = sh(api, "b", "cat /sys/class/net/eth0/statistics/rx_bytes")
    host_rx = api.vm_stats("b").net_rx_bytes or 0
    assert abs(int(guest_rx.strip()) - host_rx) <= 0.05 * host_rx + 2000, (guest_rx, host_rx)


def test_the_host_is_not_reachable_through_the_bridge(net_server: Server, lan: dict[str, str]) -> None:
    api = net_server.api()
    with socket.socket() as listener:
        listener.bind((GATEWAY, 0))  # a host service on the bridge's own address
        listener.listen(4)
        port = listener.getsockname()[1]
        with socket.create_connection((GATEWAY, port), timeout=5):
            pass  # reachable from the host itself
        code, out = sh(api, "a", f"nc -w 3 {GATEWAY} {port} </dev/null; echo rc=$?")
        assert "rc=0" not in out, out
        listener.settimeout(0.5)
        with pytest.raises(socket.timeout):
            listener.accept()  # the guest's attempt never arrived (the host's own was taken)
            listener.accept()
    assert not pings(api, "a", GATEWAY)


def test_a_spoofed_source_address_is_dropped(net_server: Server, lan: dict[str, str]) -> None:
    api = net_server.api()
    spoofed = "10.61.0.99"
    code, out = sh(api, "a", f"ip addr flush dev eth0 && ip addr add {spoofed}/24 dev eth0 && "
                             f"ping -c 3 -W 2 {lan['b']}; echo rc=$?")
    assert "rc=0" not in out, out
    # Its own address works again at once: the drop was the spoofing, nothing else.
    code, out = sh(api, "a", f"ip addr flush dev eth0 && ip addr add {lan['a']}/24 dev eth0 && "
                             f"ping -c 2 -W 3 {lan['b']}; echo rc=$?")
    assert "rc=0" in out, out


def test_another_project_on_the_same_subnet_is_isolated(net_server: Server, lan: dict[str, str]) -> None:
    admin = net_server.api()
    admin.create_project("nwblue")
    with Client(admin.url, admin.token, project="nwblue") as blue:
        blue.create_network("lan", subnet=SUBNET)  # the same name and subnet, another project
        blue.create_vm("c", networks=["lan"], memory_mib=128, start=True)
        assert blue.wait_vm("c", timeout=300).state == "running"
        c_address = blue.vm("c").nics[0].address
        assert c_address == lan["a"]  # its own IPAM: the same first address, another network
        assert not pings(blue, "c", lan["b"])
        code, out = sh(blue, "c", f"echo hi | nc -w 3 {lan['b']} 22; echo rc=$?")
        assert "rc=0" not in out
        with pytest.raises(APIError) as hidden:
            blue.vm("a")
        assert hidden.value.status == 404
        blue.delete_vm("c", force=True)
        blue.delete_network("lan")
    assert pings(admin, "a", lan["b"])


def listen(api: Client, vm: str, port: int) -> None:
    """A TCP listener in ``vm`` answering every connection with ``ok-<vm>-<port>``."""
    sh(api, vm, f"( while true; do echo ok-{vm}-{port} | nc -l -p {port}; done ) "
                "</dev/null >/dev/null 2>&1 &")


def test_two_networks_of_one_project_are_isolated(net_server: Server, lan: dict[str, str]) -> None:
    """a (on lan) and d (on lan2, the same project) never reach each other, not even with a
    route through their gateways, as a tenant would try; meanwhile a reaches b on lan and d
    reaches e on lan2, so every probe that fails fails at the networks' border."""
    api = net_server.api()
    api.create_network("lan2", subnet=OTHER_SUBNET)
    for vm in ("d", "e"):
        api.create_vm(vm, networks=["lan2"], memory_mib=128, start=True)
    for vm in ("d", "e"):
        booted = api.wait_vm(vm, timeout=300)
        assert booted.state == "running", booted.error
    address = {**lan, **{vm: api.vm(vm).nics[0].address for vm in ("d", "e")}}
    assert address["d"].startswith("10.64.0.") and address["e"].startswith("10.64.0.")
    for vm in ("a", "b", "d", "e"):
        listen(api, vm, PORT)
    # Each side routes the other network through its own gateway (the host).
    for vm, other, gateway in (("a", OTHER_SUBNET, GATEWAY), ("d", SUBNET, OTHER_GATEWAY)):
        code, out = sh(api, vm, f"ip route replace {other} via {gateway} dev eth0")
        assert code == 0, out
    try:
        # Each reaches its own network's VM, by ping and TCP both ways.
        for one, peer in (("a", "b"), ("d", "e")):
            assert pings(api, one, address[peer]) and pings(api, peer, address[one])
            assert connects(api, one, address[peer], PORT)
            assert connects(api, peer, address[one], PORT)
        # Across the two networks: neither ping nor TCP, in either direction.
        assert not pings(api, "a", address["d"]) and not pings(api, "d", address["a"])
        assert dropped(api, "a", address["d"], PORT)
        assert dropped(api, "d", address["a"], PORT)
        # Nor to the other network's gateway (the host's address on the other bridge).
        assert not pings(api, "a", OTHER_GATEWAY) and not pings(api, "d", GATEWAY)
    finally:
        sh(api, "a", f"ip route del {OTHER_SUBNET}")
        for vm in ("d", "e"):
            api.delete_vm(vm, force=True)
        api.delete_network("lan2")
    assert pings(api, "a", lan["b"])


def test_address_survives_a_restart_and_traffic_survives_the_platform_restarting(
        net_server: Server, lan: dict[str, str]) -> None:
    api = net_server.api()
    mac = api.vm("b").nics[0].mac
    api.wait_operation(api.restart_vm("b"), timeout=300)
    assert api.wait_vm("b", timeout=300).state == "running"
    assert api.vm("b").nics[0].address == lan["b"] and api.vm("b").nics[0].mac == mac
    assert pings(api, "a", lan["b"])
    devices = sorted(our_devices(net_server))
    net_server.stop()
    # While the platform is down, the guests still talk (nothing was torn down).
    net_server.start()
    api = net_server.api()
    assert wait_for(lambda: api.vm("a").state == "running", timeout=60)
    assert sorted(our_devices(net_server)) == devices
    assert pings(api, "a", lan["b"]) and pings(api, "b", lan["a"])


def test_a_network_with_vms_cannot_be_deleted_and_delete_leaves_nothing(
        net_server: Server, lan: dict[str, str]) -> None:
    api = net_server.api()
    refused = net_server.cli("network", "delete", "lan")
    assert refused.returncode == 1 and "still has VMs on it: a, b" in refused.stderr
    assert len(our_devices(net_server)) == 3 and len(our_tables(net_server)) == 2 and len(our_dnsmasqs(net_server)) == 1
    for vm in ("a", "b"):
        api.delete_vm(vm, force=True)
    assert api.network("lan").nics == []
    api.delete_network("lan")
    assert our_devices(net_server) == []
    assert our_tables(net_server) == []
    assert our_dnsmasqs(net_server) == []
    assert not list((net_server.data_dir / "net").glob("*"))
