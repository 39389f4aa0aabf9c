"""The agent contract (model/agent.py), one set of cases run against both implementations: the
in-process ``LocalAgent`` and ``RemoteAgent`` talking real HTTPS (mutual TLS, the pool CA) to a
real `virtpool agent` process joined to a real `virtpool server` on loopback.
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import JoinedAgent, link_image, make_server, passable, qemu_pids, wait_for
from virtpool.control.agents.remote import RemoteAgent
from virtpool.model.agent import Agent
from virtpool.model.errors import CommandTimeout, Conflict, NotFound, VirtpoolError
from virtpool.model.net_change import Change
from virtpool.model.network import HostNetwork, HostNetworkInput
from virtpool.model.spec import ExecOutput, ExecResult, HostInfo, VMSpec
from virtpool.model.vm import VMUsage
from virtpool.node.agent import LocalAgent

BOOT_S = 240.0  # a loaded shared machine under TCG


@pytest.fixture(scope="module", params=["local", "remote"])
def agent(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          image_cache: Path) -> Iterator[tuple[Agent, Path]]:
    data = tmp_path_factory.mktemp(f"contract-{request.param}")
    passable(data)
    (data / "images").mkdir()
    link_image(image_cache, data)
    if request.param == "local":
        local = LocalAgent(data, net_prefix="pc")
        yield local, data
        local.close()
        return
    server = make_server(tmp_path_factory, None, "contract-cp", command="server")
    try:
        joined = JoinedAgent(server, data, "pcc1", "pc")
    except RuntimeError:
        server.stop()
        raise
    try:
        time.sleep(1)  # the control plane's reconcile of the new host is done
        pki = server.data_dir / "pki"
        remote = RemoteAgent("pcc1", joined.address, ca=pki / "ca.crt", cert=pki / "control.crt",
                             key=pki / "control.key", revoked=frozenset)
        yield remote, data
        remote.close()
    finally:
        joined.stop()
        server.stop()


def test_host_info_is_typed(agent: tuple[Agent, Path]) -> None:
    info = agent[0].host_info()
    assert isinstance(info, HostInfo) and info.cpus >= 1 and info.memory_mib > 0


def test_images(agent: tuple[Agent, Path]) -> None:
    impl = agent[0]
    assert "default" in [i.name for i in impl.list_images()]
    with pytest.raises(NotFound):
        impl.get_image("pc-no-such-image")
    assert sum(len(chunk) for chunk in impl.image_file("default", "kernel")) == \
        impl.get_image("default").kernel.size  # type: ignore[union-attr]


def test_a_network_converge_says_what_it_changed(agent: tuple[Agent, Path]) -> None:
    """The agent answers a converge with what it changed (typed), so that the control plane can
    tell its operator; converging to no network takes every device of it away again. (Only what
    cannot be undone by the control plane's own round of converges, which also reaches the
    remote agent, is asserted: that round converges this host to no network.)"""
    impl, _ = agent
    try:
        made = impl.converge_networks(HostNetworkInput(networks=(
            HostNetwork(vni=4001, subnet="10.96.0.0/24"),)))
        assert made and all(type(c) is Change for c in made), made
        done = [(c.action, c.kind) for c in made]
        bridge = next(c.name for c in made if c.action == "add" and c.kind == "link")
        assert ("add", "address", bridge, "10.96.0.1/24") in [(c.action, c.kind, c.name, c.detail)
                                                               for c in made]
        assert ("add", "nft table") in done and any(k == "dnsmasq" for _, k in done), made
    finally:
        assert isinstance(impl.converge_networks(HostNetworkInput()), list)
    assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0


def test_disks_and_destroy_are_idempotent(agent: tuple[Agent, Path]) -> None:
    impl, data = agent
    vm_id = uuid.uuid4().hex
    impl.create_disk(vm_id, "default", 512)
    assert vm_id in impl.vm_ids()
    impl.destroy_vm(vm_id)
    impl.destroy_vm(vm_id)  # again: nothing there, no error
    assert vm_id not in impl.vm_ids() and not (data / "vms" / vm_id).exists()


def test_a_vm_boots_answers_and_its_exit_is_in_the_event_feed(
        agent: tuple[Agent, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    """One VM's life through the contract (one boot per implementation, for CI's time): it
    answers, its exec output streams, it is snapshotted, cloned and backed up while it runs, its
    kill is in the event feed, and its stopped disk is cloned, snapshotted and restored."""
    impl, data = agent
    vm_id = uuid.uuid4().hex
    cursor = max((e.seq for e in impl.events(0)), default=0)
    impl.create_disk(vm_id, "default", 1024)
    try:
        assert impl.start_vm(vm_id, VMSpec(name="pcc"), 0) > 0
        impl.wait_ready(vm_id, BOOT_S)
        assert impl.exec_vm(vm_id, ["uname", "-n"], 60).stdout.strip() == "pcc"
        usage = impl.vm_stats(vm_id)
        assert isinstance(usage, VMUsage) and (usage.qemu_rss_mib or 0) > 0
        # Network counters of the default network (its guest agent's), rising with traffic the
        # guest sends: 20 pings of 1000 bytes are at least 20 kB out of its NIC.
        # (Asked of the guest agent in the background: a guest on a busy host answers late.)
        usage = wait_for(lambda: (u := impl.vm_stats(vm_id)).net_tx_bytes is not None and u, timeout=30,
                         interval=1) or impl.vm_stats(vm_id)
        assert usage.net_tx_bytes is not None and usage.net_tx_packets is not None, usage
        pinged = impl.exec_vm(vm_id, ["ping", "-c", "20", "-i", "0.05", "-W", "1", "-s", "1000", "10.0.2.2"], 60)
        assert "20 packets transmitted" in pinged.stdout, pinged
        # The guest agent is asked every few seconds in the background: the rise shows within that.
        def risen() -> VMUsage | None:
            now = impl.vm_stats(vm_id)
            return now if (now.net_tx_bytes or 0) >= (usage.net_tx_bytes or 0) + 20_000 else None
        after = wait_for(risen, timeout=60, interval=1) or impl.vm_stats(vm_id)
        assert after.net_tx_bytes is not None and after.net_tx_bytes >= usage.net_tx_bytes + 20_000, (usage, after)
        assert (after.net_tx_packets or 0) >= usage.net_tx_packets + 20
        assert after.net_rx_bytes is not None and after.net_rx_bytes >= (usage.net_rx_bytes or 0)
        assert impl.adopt_vm(vm_id, "pcc") == "running"
        assert asyncio.run(_console_echo(impl, vm_id))
        data_log, _ = impl.read_log(vm_id)
        assert data_log  # the serial console logged the boot
        _exec_streams(impl, vm_id)
        of_snapshot, backup = _while_it_runs(impl, data, vm_id, tmp_path_factory.mktemp("pc-backup"))
        impl.kill_vm(vm_id)
        deadline = time.monotonic() + 60
        exits = []
        while not exits and time.monotonic() < deadline:
            exits = [e for e in impl.events(cursor, 5.0) if e.vm_id == vm_id and e.kind == "vm.exited"]
        assert exits and exits[0].data["guest_initiated"] is False
        assert impl.adopt_vm(vm_id, "pcc") is None
        _once_stopped(impl, data, vm_id, of_snapshot, backup)
    finally:
        for each in [vm_id, *(v for v in impl.vm_ids() if v.startswith("pc"))]:
            impl.destroy_vm(each)
    assert not [p for p in qemu_pids(data) if vm_id in " ".join(_cmdline(p))]


def _exec_streams(impl: Agent, vm_id: str) -> None:
    """Exec output arrives, and streamed input goes in, while the command runs. Without streaming both lines come at the
    end; streamed, "second" is still 8 s away when "first" has arrived. (qemu-ga serves one
    exec at a time: the test cannot signal the guest through a second one.)"""
    items: queue.Queue[object] = queue.Queue()

    def read() -> None:
        try:
            for item in impl.exec_stream(vm_id, ["sh", "-c", "echo first; sleep 8; echo second >&2; exit 3"], 120):
                items.put(item)
        except Exception as err:  # handed to the test's thread
            items.put(err)
        items.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    first = items.get(timeout=120)
    assert first == ExecOutput(stream="stdout", data=b"first\n"), first
    assert items.empty() and reader.is_alive()  # nothing more yet: the command still runs
    rest = []
    while (item := items.get(timeout=120)) is not None:
        rest.append(item)
    assert rest == [ExecOutput(stream="stderr", data=b"second\n"),
                    ExecResult(exit_code=3, stdout="", stderr="")], rest
    # Streamed input goes in while the command runs: the second line is sent only once the
    # answer to the first has come back (whole input up front would wait for it forever).
    answered = threading.Event()

    def typed() -> Iterator[bytes]:
        yield b"one\n"
        if answered.wait(120):
            yield b"two\n"

    out, results = b"", []
    for item in impl.exec_stream(vm_id, ["sh", "-c", 'while read -r l; do echo "got $l"; done; echo end'], 120,
                                 typed()):
        if isinstance(item, ExecOutput):
            out += item.data
            if b"got one\n" in out:
                answered.set()
        else:
            results.append(item)
    assert (out, results) == (b"got one\ngot two\nend\n", [ExecResult(exit_code=0, stdout="", stderr="")])
    with pytest.raises(CommandTimeout):
        list(impl.exec_stream(vm_id, ["sleep", "30"], 2))
    impl.wait_ready(vm_id, BOOT_S)  # the guest agent answers again once the kill is done


def _while_it_runs(impl: Agent, data: Path, vm_id: str, backups: Path) -> tuple[str, Path]:
    """A live snapshot, a clone of it, a live delete, a full backup: the clone's VM and the
    chain's directory (on the agent's host)."""
    assert impl.exec_vm(vm_id, ["sh", "-c", "echo before > /root/pc-mark; sync"], 60).exit_code == 0
    taken = impl.create_snapshot(vm_id, "pc-snap", memory=False)
    assert taken.name == "pc-snap" and [s.name for s in impl.list_snapshots(vm_id)] == ["pc-snap"]
    of_snapshot = f"pc{uuid.uuid4().hex[:20]}"  # a snapshot does not change: cloned as it runs
    impl.create_disk(of_snapshot, "default", 1024)
    impl.clone_disk(vm_id, of_snapshot, image="default", snapshot="pc-snap")
    impl.delete_snapshot(vm_id, "pc-snap")
    assert impl.list_snapshots(vm_id) == []
    impl.wait_ready(vm_id, BOOT_S)  # a busy machine: the thawed guest may take a while to answer
    assert impl.exec_vm(vm_id, ["sh", "-c", "echo after > /root/pc-mark; sync"], 60).exit_code == 0

    target = backups / "chain"
    impl.pause_vm(vm_id)  # a fixed state to compare the backup with
    try:
        chain = impl.backup_vm(vm_id, str(target), incremental=False, vm="pcc", image="default")
        assert [f.kind for f in chain.files] == ["full"] and chain.vm == "pcc"
        assert _same_disk(_disk(data, vm_id), target / chain.files[0].file)
    finally:
        impl.resume_vm(vm_id)
    assert impl.read_backup(str(target)) == chain
    with pytest.raises(Conflict):  # a full backup goes into an empty directory only
        impl.backup_vm(vm_id, str(target), incremental=False, vm="pcc", image="default")
    return of_snapshot, target


def _once_stopped(impl: Agent, data: Path, vm_id: str, of_snapshot: str, backup: Path) -> None:
    """A clone of the stopped disk; snapshots of a stopped disk; the backup restored."""
    clone = f"pc{uuid.uuid4().hex[:20]}"
    impl.create_disk(clone, "default", 1024)
    impl.clone_disk(vm_id, clone, image="default", snapshot=None)
    assert _same_disk(_disk(data, vm_id), _disk(data, clone))
    assert not _same_disk(_disk(data, vm_id), _disk(data, of_snapshot))  # the mark differs

    impl.create_snapshot(clone, "pc-off", memory=False)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", str(_disk(data, clone))],
                   check=True, capture_output=True, timeout=120)
    assert not _same_disk(_disk(data, vm_id), _disk(data, clone))
    impl.restore_snapshot(clone, "pc-off")
    assert _same_disk(_disk(data, vm_id), _disk(data, clone))
    impl.delete_snapshot(clone, "pc-off")
    assert impl.list_snapshots(clone) == []
    with pytest.raises(VirtpoolError):
        impl.delete_snapshot(clone, "pc-off")

    restored = f"pc{uuid.uuid4().hex[:20]}"
    impl.create_disk(restored, "default", 1024)
    impl.restore_backup(restored, str(backup))
    assert _same_disk(_disk(data, restored), backup / "0000-full.qcow2")
    with pytest.raises(NotFound):
        impl.read_backup(str(backup.parent / "pc-no-chain"))
    for each in (clone, of_snapshot, restored):
        impl.destroy_vm(each)
        assert each not in impl.vm_ids()


def _disk(data: Path, vm_id: str) -> Path:
    return data / "vms" / vm_id / "disk.qcow2"


def _same_disk(a: Path, b: Path) -> bool:
    """Whether two qcow2 disks hold the same guest-visible bytes (-U: one may be open in QEMU)."""
    compared = subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", str(a), str(b)],
                              capture_output=True, text=True, timeout=300)
    assert compared.returncode in (0, 1), compared.stderr
    return compared.returncode == 0


async def _console_echo(impl: Agent, vm_id: str) -> bool:
    console = await impl.open_console(vm_id)
    try:
        await console.write(b"echo pc-console-$((6*7))\n")
        seen = b""
        deadline = time.monotonic() + 180
        while b"pc-console-42" not in seen and time.monotonic() < deadline:
            seen += await asyncio.wait_for(console.read(), 180)
        return b"pc-console-42" in seen
    finally:
        await console.close()


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return []
