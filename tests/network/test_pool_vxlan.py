"""One network across two hosts of one pool: two `virtpool agent`s, each in a network namespace
of its own (tests/cluster/harness.py's lab), joined to a `virtpool server` in the root namespace.
The control plane pushes each host its VXLAN peers (the other hosts' agent addresses); VMs of
the network on both hosts ping each other and exchange TCP. A push that a host's agent missed
(it was down) heals when the agent is back; a host whose last VM of the network goes loses its
peer; nothing is left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.cluster.harness import Lab, NetnsHost
from tests.conftest import Server, make_server, passable, wait_for
from tests.network.conftest import kernel_state
from tests.network.test_vm_networks import pings, sh, tcp_exchange
from virtpool.sdk import Client

VIRTPOOL = str(Path(sys.executable).parent / "virtpool")
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
LAB_PREFIX = f"npl{_WORKER}"
LAB_SUBNET = f"10.233.{120 + _WORKER}"
NET_PREFIX = f"npv{'abcdefghij'[_WORKER % 10]}"  # the agents' devices and tables
SUBNET = f"10.{81 + _WORKER}.0.0/24"


@dataclass
class Pool:
    lab: Lab
    control: Server
    join: str
    agents: dict[str, subprocess.Popen[bytes]]

    def start_agent(self, host: NetnsHost) -> None:
        token = self.control.api().join_token(600)["token"]  # good once; ignored on a rejoin
        argv = [VIRTPOOL, "agent", "--server", self.join, "--join", token,
                "--data-dir", str(host.data_dir), "--listen", f"{host.address}:0",
                "--name", host.name, "--net-prefix", NET_PREFIX]
        self.agents[host.name] = self.lab.start(argv, host.data_dir.parent / f"{host.name}.log", host)
        assert wait_for(lambda: self.up(host.name), timeout=90), self.log(host)

    def kill_agent(self, host: NetnsHost) -> None:
        proc = self.agents.pop(host.name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def up(self, name: str) -> bool:
        view = next((h for h in self.control.api().hosts() if h.name == name), None)
        return view is not None and view.state == "up" and view.address is not None

    def log(self, host: NetnsHost) -> str:
        path = host.data_dir.parent / f"{host.name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def in_ns(host: NetnsHost, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", host.name, *argv], capture_output=True,
                          text=True, timeout=30).stdout


def vxlan_peers(host: NetnsHost) -> list[str]:
    """The VXLAN underlay addresses the host floods to (its head-end replication entries)."""
    out = in_ns(host, "bridge", "fdb", "show")
    return sorted(line.split(" dst ")[1].split()[0] for line in out.splitlines()
                  if line.startswith("00:00:00:00:00:00") and " dst " in line
                  and f"{NET_PREFIX}vx" in line)


def our_devices(host: NetnsHost) -> list[str]:
    out = in_ns(host, "ip", "-o", "link", "show")
    names = [line.split(": ")[1].split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(NET_PREFIX)]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Pool]:
    lab = Lab(2, prefix=LAB_PREFIX, subnet=LAB_SUBNET).setup()
    passable(lab.root)
    control = None
    try:
        control = make_server(tmp_path_factory, image_cache, "vxcontrol", command="server",
                              extra_args=("--agent-listen", f"{LAB_SUBNET}.1:0"))
        join = (control.data_dir / "join.url").read_text().strip()
        made = Pool(lab, control, join, {})
        for host in lab.hosts:
            made.start_agent(host)
            control.api().label_host(host.name, {"np": host.name})
        yield made
    finally:
        if control is not None:
            control.cleanup()
        lab.teardown()
    assert lab.leftovers() == {"namespaces": [], "links": [], "processes": [], "files": []}


def on(api: Client, name: str, host: NetnsHost) -> None:
    api.create_vm(name, networks=["span"], memory_mib=128, required_labels={"np": host.name},
                  start=True)


def test_vms_of_one_network_on_two_hosts_talk_and_a_missed_push_heals(pool: Pool) -> None:
    api = pool.control.api()
    h1, h2 = pool.lab.hosts
    api.create_network("span", subnet=SUBNET)
    on(api, "va", h1)
    assert api.wait_vm("va", timeout=300).state == "running"
    assert api.vm("va").host == h1.name
    assert vxlan_peers(h1) == []  # alone on the network: no VXLAN to anyone

    # h1's agent is down while vb starts on h2: the push of h1's new peer misses it.
    pool.kill_agent(h1)
    on(api, "vb", h2)
    assert api.wait_vm("vb", timeout=300).state == "running", pool.log(h2)
    address = {vm: api.vm(vm).nics[0].address for vm in ("va", "vb")}
    assert not pings(api, "vb", address["va"])  # the missed push matters: no path yet

    # Its agent is back: the control plane converges it, and with it h2 again.
    pool.start_agent(h1)
    assert wait_for(lambda: vxlan_peers(h1) == [h2.address] and vxlan_peers(h2) == [h1.address],
                    timeout=60), (vxlan_peers(h1), vxlan_peers(h2), pool.log(h1))
    assert wait_for(lambda: pings(api, "vb", address["va"]), timeout=60)
    assert pings(api, "va", address["vb"])
    client_got, server_got = tcp_exchange(api, "vb", address["vb"], "va")
    assert "from-vb" in client_got and "from-va" in server_got
    client_got, server_got = tcp_exchange(api, "va", address["va"], "vb")
    assert "from-va" in client_got and "from-vb" in server_got
    # The guests' MTU leaves room for the VXLAN header in the underlay's 1500 bytes, and a
    # packet of that size crosses.
    assert sh(api, "va", "cat /sys/class/net/eth0/mtu")[1].strip() == "1450"
    assert sh(api, "va", f"ping -c 1 -W 3 -s 1422 {address['vb']}")[0] == 0

    # vb goes: h1 loses its peer (and its VXLAN device), h2 its devices.
    api.delete_vm("vb", force=True)
    assert wait_for(lambda: vxlan_peers(h1) == [] and our_devices(h2) == [], timeout=60), \
        (vxlan_peers(h1), our_devices(h2))
    assert not [d for d in our_devices(h1) if d.startswith(f"{NET_PREFIX}vx")]
    api.delete_vm("va", force=True)
    api.delete_network("span")
    assert wait_for(lambda: our_devices(h1) == [], timeout=60), our_devices(h1)
    dnsmasqs = [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "dnsmasq"
                and any(str(pool.lab.root) in a for a in p.info["cmdline"] or [])]
    assert dnsmasqs == []


FLOW_SUBNET = f"10.{81 + _WORKER}.1.0/24"
STREAM_PORT = 7100


def agent_log(host: NetnsHost) -> str:
    path = host.data_dir.parent / f"{host.name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_agent_restarts_keep_traffic_flowing_and_change_nothing(pool: Pool) -> None:
    """Two VMs on two hosts talk without a pause (one TCP connection carrying a numbered line
    every 0.2 s, and a ping every 0.2 s) while each host's agent is killed (-9) and started
    again: the connection carries every line, the pings are answered, and the restarted agents'
    converges leave every device, nftables table and rule and dnsmasq as it was."""
    api = pool.control.api()
    h1, h2 = pool.lab.hosts
    api.create_network("flow", subnet=FLOW_SUBNET)
    for vm, host in (("fa", h1), ("fb", h2)):
        api.create_vm(vm, networks=["flow"], memory_mib=128, required_labels={"np": host.name},
                      start=True)
    for vm in ("fa", "fb"):
        assert api.wait_vm(vm, timeout=300).state == "running", pool.log(h1) + pool.log(h2)
    fa, fb = (api.vm(vm).nics[0].address for vm in ("fa", "fb"))
    assert wait_for(lambda: pings(api, "fb", fa), timeout=60)
    before = {h.name: kernel_state(h.name, NET_PREFIX, h.data_dir / "net") for h in (h1, h2)}

    # The listener's input never ends: nc closes the connection when its input does.
    sh(api, "fa", f"rm -f /tmp/stream; ( sleep 600 | nc -l -p {STREAM_PORT} >/tmp/stream ) "
                  "</dev/null >/dev/null 2>&1 &")
    # Lines until /tmp/stop appears; -w: nc ends a few seconds after its input does.
    sh(api, "fb", "rm -f /tmp/stop /tmp/sent /tmp/done; ( i=0; while [ ! -e /tmp/stop ]; do "
                  "echo line-$i; i=$((i+1)); echo $i >/tmp/sent; sleep 0.2; done "
                  f"| nc -w 5 {fa} {STREAM_PORT}; echo rc=$? >/tmp/done ) </dev/null >/dev/null 2>&1 &")
    sh(api, "fb", f"( ping -i 0.2 {fa} >/tmp/ping 2>&1 ) </dev/null >/dev/null 2>&1 &")
    assert wait_for(lambda: sh(api, "fa", "wc -l </tmp/stream")[1].strip() not in ("", "0"),
                    timeout=30)

    for host in (h1, h2):
        seen = len(agent_log(host))
        pool.kill_agent(host)
        pool.start_agent(host)
        # The control plane converges the agent it sees back; that converge finds nothing to do.
        assert wait_for(lambda: "as planned already, nothing changed" in agent_log(host)[seen:],
                        timeout=90), agent_log(host)[seen:][-3000:]
        changed = [line for line in agent_log(host)[seen:].splitlines()
                   if "net.apply: network of" in line and not line.endswith("nothing changed")]
        assert changed == []

    sh(api, "fb", "sleep 2; touch /tmp/stop")
    assert wait_for(lambda: "rc=" in sh(api, "fb", "cat /tmp/done 2>/dev/null")[1], timeout=60)
    assert "rc=0" in sh(api, "fb", "cat /tmp/done")[1]
    sent = int(sh(api, "fb", "cat /tmp/sent")[1].strip())
    got = sh(api, "fa", "cat /tmp/stream")[1].split()
    assert sent > 25 and got == [f"line-{i}" for i in range(sent)], (sent, got[-5:])
    # Ping's own tally (SIGINT makes it print it): every request answered, or a bounded few lost
    # to a guest's scheduling on TCG, never a gap of seconds.
    _, tally = sh(api, "fb", "kill -INT $(pidof ping); sleep 1; tail -n 3 /tmp/ping")
    transmitted, received = (int(n) for n in re.findall(r"(\d+) packets transmitted, (\d+)", tally)[0])
    assert transmitted > 25 and received >= transmitted - 2, tally
    after = {h.name: kernel_state(h.name, NET_PREFIX, h.data_dir / "net") for h in (h1, h2)}
    assert after == before, {name: before[name].diff(after[name]) for name in before}

    for vm in ("fa", "fb"):
        api.delete_vm(vm, force=True)
    api.delete_network("flow")
    assert wait_for(lambda: our_devices(h1) == [] and our_devices(h2) == [], timeout=60)
