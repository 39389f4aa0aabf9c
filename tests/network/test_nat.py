"""NAT networks with real VMs: a guest reaches "the internet" (a listener in a network namespace
of its own, routed through the host) masqueraded behind the host's address, while the host's
own services stay out of its reach and the host forwards nothing else than before; a VM's
`--port` forward is nftables DNAT to its address, reachable from outside and from the host,
and gone when the VM stops. Forwarding is switched on only where NAT needs it (never the global
``ip_forward``) and put back when the last NAT network goes."""

from __future__ import annotations

import json
import os
import socket
import string
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import Server, make_server, qemu_pids, wait_for
from tests.network.test_vm_networks import our_dnsmasqs, sh
from virtpool.sdk import Client

_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
PREFIX = f"np{string.ascii_lowercase[_WORKER % 26]}"  # this file's servers: np + worker
SUBNET = f"10.{71 + _WORKER}.0.0/24"
# Two "outside" namespaces, each joined to the host by a veth pair: /30s no host interface uses.
OUTSIDE = {"a": f"10.252.{8 + 2 * _WORKER}", "b": f"10.252.{9 + 2 * _WORKER}"}

LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0)); s.listen(16); print(s.getsockname()[1], flush=True)
while True:
    c, peer = s.accept()
    with c: c.sendall(f"hello {peer[0]}\\n".encode())
"""


PAGE = "mkdir -p /tmp/www && echo guest-page >/tmp/www/index.html && httpd -p 80 -h /tmp/www"


# node/net/forwarding.py's registry of the interfaces virtpool switched forwarding on for.
REGISTRY = Path(f"/run/virtpool-forwarding/ino{os.stat('/proc/self/ns/net').st_ino}/uplinks.json")


def forwarding(name: str, netns: str | None = None) -> int:
    argv = ["cat", f"/proc/sys/net/ipv4/conf/{name}/forwarding"]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return int(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


@dataclass
class Outside:
    """A namespace beyond the host: ``host_ip`` is the host's end, ``ip`` the namespace's."""

    name: str
    base: str
    listener: subprocess.Popen[str] | None = None
    port: int = 0

    @property
    def netns(self) -> str:
        return f"{PREFIX}-out{self.name}"

    @property
    def veth(self) -> str:
        return f"{PREFIX}o{self.name}"

    @property
    def host_ip(self) -> str:
        return f"{self.base}.1"

    @property
    def ip(self) -> str:
        return f"{self.base}.2"

    def setup(self) -> Outside:
        self.remove()
        run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth)
        run("ip", "link", "set", self.veth, "up")
        run("ip", "netns", "exec", self.netns, "ip", "addr", "add", f"{self.ip}/30", "dev", "eth0")
        run("ip", "netns", "exec", self.netns, "ip", "link", "set", "eth0", "up")
        run("ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up")
        # Everything else through the host (as the internet routes back to it): the guests'
        # subnet too, so only the host's forwarding rules decide what gets through.
        run("ip", "netns", "exec", self.netns, "ip", "route", "add", "default", "via", self.host_ip)
        self.listener = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, "-c",
                                          LISTENER, self.ip], stdout=subprocess.PIPE, text=True)
        assert self.listener.stdout is not None
        self.port = int(self.listener.stdout.readline())
        return self

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], capture_output=True,
                              text=True, timeout=timeout)

    def connect(self, address: str, port: int) -> str:
        """What a TCP client in this namespace gets from ``address:port`` ('' when nothing)."""
        code = ("import socket,sys\ntry:\n s=socket.create_connection((sys.argv[1],int(sys.argv[2])),"
                "timeout=4); print(s.recv(200).decode().strip())\nexcept OSError as e: print('')")
        return self.run(sys.executable, "-c", code, address, str(port)).stdout.strip()

    def remove(self) -> None:
        if self.listener is not None:
            self.listener.kill()
            self.listener.wait()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)


@pytest.fixture(scope="module")
def outside() -> Iterator[dict[str, Outside]]:
    made = {name: Outside(name, base).setup() for name, base in OUTSIDE.items()}
    yield made
    for each in made.values():
        each.remove()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in listed.split() if n.startswith(f"{PREFIX}-out")]


@pytest.fixture(scope="module")
def nat_server(tmp_path_factory: pytest.TempPathFactory, image_cache: Path,
               outside: dict[str, Outside]) -> Iterator[Server]:
    before = {name: forwarding(name) for name in psutil.net_if_addrs() if name != "lo"}
    srv = make_server(tmp_path_factory, image_cache, "natpool", boot_timeout=150.0,
                      extra_args=("--net-prefix", PREFIX))
    yield srv
    srv.cleanup()
    assert qemu_pids(srv.data_dir) == []
    subprocess.run(["nft", "delete", "table", "inet", f"{PREFIX}guard"], check=True)
    # This platform holds no interface's forwarding any more, and every interface no other
    # platform holds (a parallel test's) is back to what it was; never switched on globally.
    held = json.loads(REGISTRY.read_text()) if REGISTRY.exists() else {}
    assert not [n for n, e in held.items() if any(str(srv.data_dir) in h for h in e["holders"])]
    after = {name: forwarding(name) for name in before
             if os.path.exists(f"/sys/class/net/{name}") and name not in held}
    assert after == {name: before[name] for name in after}
    assert forwarding("all") == 0


def tables() -> list[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.endswith((f" {PREFIX}host", f" {PREFIX}net"))]


def devices() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = [line.split(": ")[1].split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith((f"{PREFIX}br", f"{PREFIX}t", f"{PREFIX}vx"))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def nat_vm(nat_server: Server) -> Iterator[dict[str, str | int]]:
    """VM 'edge' on NAT network 'out', an httpd in it on port 80 forwarded from a host port."""
    api = nat_server.api()
    made = nat_server.cli("network", "create", "out", "--subnet", SUBNET, "--nat")
    assert made.returncode == 0, made.stderr
    port = free_port()
    created = nat_server.cli("vm", "create", "edge", "--network", "out", "--port", f"{port}:80",
                             "--memory", "128M", "--start", "--wait", "--wait-timeout", "300")
    assert created.returncode == 0, created.stdout + created.stderr
    code, out = sh(api, "edge", f"{PAGE}; echo rc=$?")
    assert "rc=0" in out, out
    yield {"address": api.vm("edge").nics[0].address, "port": port}


def test_a_guest_on_a_nat_network_reaches_outside_masqueraded_but_not_the_host(
        nat_server: Server, nat_vm: dict[str, str | int], outside: dict[str, Outside]) -> None:
    api = nat_server.api()
    far = outside["a"]
    code, out = sh(api, "edge", f"nc -w 5 {far.ip} {far.port} </dev/null; echo rc=$?")
    # It arrived from the host's address on that link, not the guest's: masqueraded.
    assert f"hello {far.host_ip}" in out, out
    before = api.vm_stats("edge")
    assert sh(api, "edge", f"ping -c 2 -W 3 {far.ip}")[0] == 0
    # The VM's NIC counters (its tap's) saw at least those two pings each way.
    after = api.vm_stats("edge")
    assert before.net_tx_packets is not None and after.net_tx_packets is not None
    assert after.net_tx_packets - before.net_tx_packets >= 2
    assert after.net_rx_packets - before.net_rx_packets >= 2  # type: ignore[operator]
    assert after.net_rx_bytes > before.net_rx_bytes >= 0  # type: ignore[operator]
    # The host's own services, on its address towards the outside and on its main address
    # (that of its default route: the addresses of other tests' bridges come and go), stay out
    # of reach (the positive control: the host itself reaches them).
    main = subprocess.run(["ip", "-4", "-o", "route", "get", "192.0.2.200"], capture_output=True,
                          text=True, check=True).stdout.split(" src ")[1].split()[0]
    for address in (far.host_ip, main):
        with socket.socket() as listener:
            listener.bind((address, 0))
            listener.listen(4)
            port = listener.getsockname()[1]
            with socket.create_connection((address, port), timeout=5):
                pass
            listener.accept()[0].close()
            _, out = sh(api, "edge", f"echo x | nc -w 3 {address} {port}; echo rc=$?")
            assert "rc=0" not in out, (address, out)
            listener.settimeout(0.3)
            with pytest.raises(socket.timeout):
                listener.accept()
    assert forwarding("all") == 0, "NAT must not switch on forwarding for every interface"


def test_the_host_forwards_nothing_else_than_before(
        nat_server: Server, nat_vm: dict[str, str | int], outside: dict[str, Outside]) -> None:
    a, b = outside["a"], outside["b"]
    # NAT needed forwarding on the host's links to both namespaces...
    assert forwarding(a.veth) == 1 and forwarding(b.veth) == 1
    # ...yet one namespace still cannot reach the other through the host, as without virtpool,
    assert a.connect(b.ip, b.port) == ""
    # nor the guest directly (only through its --port forward, below).
    assert a.run("ping", "-c", "1", "-W", "2", str(nat_vm["address"])).returncode != 0
    # The positive control: the namespace reaches the host itself.
    assert a.run("ping", "-c", "1", "-W", "2", a.host_ip).returncode == 0


def test_a_port_forward_is_dnat_to_the_vm_and_goes_when_it_stops(
        nat_server: Server, nat_vm: dict[str, str | int], outside: dict[str, Outside]) -> None:
    api = nat_server.api()
    far, port = outside["a"], int(nat_vm["port"])
    get = ("import sys,urllib.request\ntry: print(urllib.request.urlopen(sys.argv[1],timeout=5)"
           ".read().decode().strip())\nexcept OSError as e: print('')")
    url = f"http://{far.host_ip}:{port}/index.html"
    assert far.run(sys.executable, "-c", get, url).stdout.strip() == "guest-page"
    # From the host itself, to its own address.
    assert subprocess.run([sys.executable, "-c", get, url], capture_output=True, text=True,
                          timeout=30).stdout.strip() == "guest-page"
    ruleset = subprocess.run(["nft", "list", "table", "inet", f"{PREFIX}host"],
                             capture_output=True, text=True).stdout
    assert f"dnat ip to {nat_vm['address']}:80" in ruleset
    api.stop_vm("edge", force=True)
    assert wait_for(lambda: api.vm("edge").state == "stopped", timeout=120)
    assert far.run(sys.executable, "-c", get, url).stdout.strip() == ""
    assert "dnat" not in subprocess.run(["nft", "list", "table", "inet", f"{PREFIX}host"],
                                        capture_output=True, text=True).stdout
    api.start_vm("edge")
    restarted = api.wait_vm("edge", timeout=300)
    assert restarted.state == "running", restarted.error
    sh(api, "edge", PAGE)  # the guest's /tmp is new after its restart
    assert far.run(sys.executable, "-c", get, url).stdout.strip() == "guest-page"


def test_a_port_forward_respects_the_vms_security_groups(
        nat_server: Server, nat_vm: dict[str, str | int], outside: dict[str, Outside]) -> None:
    """The DNAT'd connection reaches the guest as the outside's, so the VM's groups decide: a
    group without rules drops it, a rule for the guest port lets it in (from that address
    only, when it names one), and its removal, or leaving the group, acts on the running VM."""
    api = nat_server.api()
    far, port = outside["a"], int(nat_vm["port"])
    get = ("import sys,urllib.request\ntry: print(urllib.request.urlopen(sys.argv[1],timeout=5)"
           ".read().decode().strip())\nexcept OSError as e: print('')")
    url = f"http://{far.host_ip}:{port}/index.html"

    def page_from(ns: Outside) -> str:
        return ns.run(sys.executable, "-c", get, f"http://{ns.host_ip}:{port}/index.html").stdout.strip()

    assert page_from(far) == "guest-page"  # the positive control: no group yet
    api.create_secgroup("edge-web")
    try:
        api.set_vm_secgroups("edge", ["edge-web"])
        assert page_from(far) == ""  # a group without rules: the forward is dropped
        rule = api.add_secgroup_rule("edge-web", "ingress", "tcp", ports="80",
                                     remote_cidr=f"{far.ip}/32")
        assert page_from(far) == "guest-page"
        assert page_from(outside["b"]) == ""  # another address than the rule's stays out
        # A rule for another port than the guest's does not open the forward.
        api.remove_secgroup_rule("edge-web", rule.id)
        api.add_secgroup_rule("edge-web", "ingress", "tcp", ports=str(port))
        assert page_from(far) == ""
        api.set_vm_secgroups("edge", [])
        assert far.run(sys.executable, "-c", get, url).stdout.strip() == "guest-page"
    finally:
        api.set_vm_secgroups("edge", [])
        for group in api.secgroups():
            for each in group.rules:
                api.remove_secgroup_rule(group.name, each.id)
            api.delete_secgroup(group.name)


def test_ports_without_a_nat_network_are_refused_and_delete_leaves_nothing(
        nat_server: Server, nat_vm: dict[str, str | int], outside: dict[str, Outside]) -> None:
    api = nat_server.api()
    api.create_network("flat", subnet=f"10.{71 + _WORKER}.1.0/24")
    refused = nat_server.cli("vm", "create", "nope", "--network", "flat", "--port", f"{free_port()}:80")
    assert refused.returncode != 0 and "NAT network" in refused.stderr, refused.stderr
    assert api.network("flat").nics == [] and "nope" not in [vm.name for vm in api.vms()]
    api.delete_network("flat")
    api.delete_vm("edge", force=True)
    api.delete_network("out")
    assert devices() == [] and tables() == [] and our_dnsmasqs(nat_server) == []
    a, b = outside["a"], outside["b"]
    # Forwarding on the links is put back, unless another platform on this host (a parallel
    # test's) holds it still.
    held = json.loads(REGISTRY.read_text()) if REGISTRY.exists() else {}
    for link in (a.veth, b.veth):
        holders = held.get(link, {}).get("holders", [])
        assert not [h for h in holders if str(nat_server.data_dir) in h]
        assert forwarding(link) == 0 or holders
    assert nat_server.cli("network", "list", "--json").stdout.strip() in ("[]", "")
    with Client(api.url, api.token) as fresh:
        assert fresh.vms() == []
