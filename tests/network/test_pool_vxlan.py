"""One network across two hosts of one pool: two `virtpool agent`s, each in a network namespace
of its own (tests/cluster/harness.py's lab), joined to a `virtpool server` in the root namespace.
The control plane pushes each host its VXLAN peers (the other hosts' agent addresses); VMs of
the network on both hosts ping each other and exchange TCP. A push that a host's agent missed
(it was down) heals when the agent is back; a host whose last VM of the network goes loses its
peer; nothing is left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cluster.harness import Lab, NetnsHost
from tests.conftest import Server, make_server, passable, wait_for
from tests.network.conftest import free_subnet, kernel_state, next_prefix
from tests.network.test_vm_networks import pings, sh, tcp_exchange
from virtpool.model.event import Event
from virtpool.sdk import Client

VIRTPOOL = str(Path(sys.executable).parent / "virtpool")
# Names of this run's own (VIRTPOOL_TEST_NET_PREFIX, the xdist worker): two runs on one machine
# never share a namespace, a device or a table.
LAB_PREFIX = next_prefix()  # the namespaces and veths (the root namespace)
LAB_SUBNET = free_subnet(LAB_PREFIX)  # the underlay, on the lab's bridge in the root namespace
NET_PREFIX = next_prefix()  # the agents' devices and tables (inside their namespaces)
# The VMs' networks exist only inside this run's namespaces: no other run can see them.
SUBNET = "10.81.0.0/24"


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


FLOW_SUBNET = "10.81.1.0/24"


def vm_on_each_host(pool: Pool, network: str, subnet: str, names: tuple[str, str]) -> tuple[str, str]:
    """A network, and a running VM of it on each host (the first named on the first host): their
    addresses, once the second pings the first."""
    api = pool.control.api()
    api.create_network(network, subnet=subnet)
    for vm, host in zip(names, pool.lab.hosts):
        api.create_vm(vm, networks=[network], memory_mib=128, required_labels={"np": host.name},
                      start=True)
    for vm in names:
        assert api.wait_vm(vm, timeout=300).state == "running", \
            "".join(pool.log(h) for h in pool.lab.hosts)
    first, second = (api.vm(vm).nics[0].address for vm in names)
    assert wait_for(lambda: pings(api, names[1], first), timeout=60)
    return first, second


def remove(pool: Pool, network: str, names: tuple[str, str]) -> None:
    """The VMs and their network gone, and with them every device of ours on both hosts."""
    api = pool.control.api()
    for vm in names:
        api.delete_vm(vm, force=True)
    api.delete_network(network)
    assert wait_for(lambda: all(our_devices(h) == [] for h in pool.lab.hosts), timeout=60)
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
    fa, fb = vm_on_each_host(pool, "flow", FLOW_SUBNET, ("fa", "fb"))
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

    # Lines go on after both restarts (counted, not timed: a loaded guest's 0.2 s sleeps are slow).
    restarted_at = int(sh(api, "fb", "cat /tmp/sent")[1].strip())
    assert wait_for(lambda: int(sh(api, "fb", "cat /tmp/sent")[1].strip()) >= restarted_at + 5, timeout=60)
    sh(api, "fb", "touch /tmp/stop")
    assert wait_for(lambda: "rc=" in sh(api, "fb", "cat /tmp/done 2>/dev/null")[1], timeout=60)
    assert "rc=0" in sh(api, "fb", "cat /tmp/done")[1]
    sent = int(sh(api, "fb", "cat /tmp/sent")[1].strip())
    got = sh(api, "fa", "cat /tmp/stream")[1].split()
    assert sent >= restarted_at + 5 and got == [f"line-{i}" for i in range(sent)], (sent, got[-5:])
    # Ping's own tally (SIGINT makes it print it): every request answered, or a bounded few lost
    # to a guest's scheduling on TCG, never a gap of seconds.
    _, tally = sh(api, "fb", "kill -INT $(pidof ping); sleep 1; tail -n 3 /tmp/ping")
    transmitted, received = (int(n) for n in re.findall(r"(\d+) packets transmitted, (\d+)", tally)[0])
    assert transmitted >= 10 and received >= transmitted - 2, tally  # it pinged through both restarts
    after = {h.name: kernel_state(h.name, NET_PREFIX, h.data_dir / "net") for h in (h1, h2)}
    assert after == before, {name: before[name].diff(after[name]) for name in before}

    remove(pool, "flow", ("fa", "fb"))


HEAL_SUBNET = "10.81.2.0/24"


def test_a_rule_deleted_by_hand_is_put_back_and_the_operator_is_told(pool: Pool) -> None:
    """Someone deletes, by hand, the rule that lets a VM receive from its own network: the
    control plane's next round of converges puts exactly that rule back, traffic flows again,
    and `virtpool events` says which host was healed and of what."""
    api = pool.control.api()
    h1 = pool.lab.hosts[0]
    ha, _ = vm_on_each_host(pool, "heal", HEAL_SUBNET, ("ha", "hb"))
    tap, = [d for d in our_devices(h1) if d.startswith(f"{NET_PREFIX}t")]
    table, chain = f"{NET_PREFIX}sg", f"in_{tap}"

    def same_network_rule() -> dict[str, Any] | None:  # "from this network: on to the next check"
        listing = json.loads(in_ns(h1, "nft", "-j", "list", "chain", "inet", table, chain))
        return next((r["rule"] for r in listing["nftables"]
                     if "rule" in r and '"iifname"' in json.dumps(r["rule"]["expr"])), None)

    def heals() -> list[Event]:
        return api.events(kind="network.healed", limit=1000)

    for _attempt in range(3):
        before = {e.id for e in heals()}
        rule = same_network_rule()
        assert rule is not None
        subprocess.run(["ip", "netns", "exec", h1.name, "nft", "delete", "rule", "inet", table,
                        chain, "handle", str(rule["handle"])], check=True)
        if not pings(api, "hb", ha):  # a new ping (conntrack: a new flow) is dropped
            break
        # It passed: only because a round put the rule back meanwhile; then delete it again.
        assert same_network_rule() is not None, "traffic passed without the rule"
    else:
        raise AssertionError("every deletion was healed before a ping could tell")

    assert wait_for(lambda: [e for e in heals() if e.id not in before], timeout=120), \
        pool.control.log.read_text(errors="replace")[-3000:]
    event, = [e for e in heals() if e.id not in before]
    assert event.data is not None and event.data["host"] == h1.name
    assert [(c["action"], c["kind"], c["name"]) for c in event.data["changes"]] == \
        [("add", "nft rule", f"inet {table} {chain}")], event.data
    assert "iifname" in event.data["changes"][0]["detail"]
    assert same_network_rule() is not None
    assert pings(api, "hb", ha)
    # What the operator reads.
    shown = pool.control.cli("events", "--kind", "network.healed")
    assert shown.returncode == 0, shown.stderr
    assert f"host '{h1.name}'" in shown.stdout and f"add nft rule inet {table} {chain}" in shown.stdout

    remove(pool, "heal", ("ha", "hb"))
