"""One control plane (`virtpool server` on PostgreSQL) drives three standalone `virtpool agent`s,
each in its own network namespace, over mutual TLS: a VM on each host through its lifecycle,
placed apart by a hard anti-affinity group or pinned with `--host`; an image fetched by a host
that lacks it, with its progress in the operation; console, logs, exec, stats and resize of VMs
on remote hosts. Afterwards no VM dir or QEMU is left on any host.

One VM per host: boots under TCG on a shared 2-core machine are the expensive part.
"""

from __future__ import annotations

import os
import pty
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.cluster.conftest import VIRTPOOL, Cluster
from tests.cluster.harness import HOST_NAMES
from tests.conftest import qemu_pids, read_until, wait_for
from virtpool.sdk.errors import APIError

H1, H2, H3 = HOST_NAMES
BOOT_WAIT_S = 300
GROUP = "cl-spread"
NAMES = ("a1", "a2", "a3")  # a3 pinned to h3; a1 and a2 wherever the group lets them go


@dataclass
class Spread:
    ids: dict[str, str] = field(default_factory=dict)  # name -> VM id
    fetch_progress: list[tuple[int, str]] = field(default_factory=list)  # a3's create, as seen


def create_pinned_watching_the_fetch(cluster: Cluster, name: str, host: str,
                                     seen: list[tuple[int, str]]) -> subprocess.CompletedProcess[str]:
    """`vm create NAME --host HOST --group G --start --wait` through the CLI, over a link slowed
    to WAN speed (HOST lacks the image, so its agent fetches it from the control plane), while
    the operation's progress is read as a user's `operation list` would."""
    done = threading.Event()

    def watch() -> None:
        with cluster.api() as api:
            while not done.is_set():
                for op in api.operations(kind="vm.create", target=name, limit=5):
                    if (op.progress, op.message or "") not in seen:
                        seen.append((op.progress, op.message or ""))
                time.sleep(0.1)

    node = cluster.node(host)
    assert node.host is not None
    node.host.throttle("80mbit")  # 57 MB of image: several seconds on the way
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return cluster.cli("vm", "create", name, "--host", host, "--group", GROUP, "--start",
                           "--wait", "--wait-timeout", str(BOOT_WAIT_S), timeout=BOOT_WAIT_S + 60)
    finally:
        node.host.unthrottle()
        done.set()
        watcher.join(10)


@pytest.fixture(scope="module")
def spread(cluster: Cluster) -> Iterator[Spread]:
    """a3 pinned to h3, then a1 and a2 in the same hard anti-affinity group: they can only land
    on h1 and h2, one each."""
    found = Spread()
    with cluster.api(timeout=BOOT_WAIT_S) as api:
        api.create_group(GROUP, "anti-affinity", hard=True)
    made = create_pinned_watching_the_fetch(cluster, "a3", H3, found.fetch_progress)
    assert made.returncode == 0, (made.stderr, cluster.logs())
    with cluster.api(timeout=BOOT_WAIT_S) as api:
        ops = [api.create_vm(name, group=GROUP, start=True) for name in ("a1", "a2")]
        for op in ops:
            api.wait_operation(op, timeout=BOOT_WAIT_S)
        found.ids = {vm.name: vm.id for vm in api.vms() if vm.name in NAMES}
    yield found
    with cluster.api() as api:
        for name in NAMES:
            try:
                api.delete_vm(name, force=True)
            except APIError:
                pass
        api.delete_group(GROUP)


def test_a_group_spreads_vms_over_the_hosts_and_a_pin_is_kept(cluster: Cluster, spread: Spread) -> None:
    with cluster.api() as api:
        placed = {vm.name: (vm.host, vm.state.value, vm.pinned) for vm in api.vms() if vm.name in NAMES}
        assert placed["a3"] == (H3, "running", True)
        assert {placed["a1"][0], placed["a2"][0]} == {H1, H2}  # one each, never together
        assert placed["a1"][1:] == placed["a2"][1:] == ("running", False)
        # A fourth member has nowhere to go: the scheduler says why, and nothing is made.
        with pytest.raises(APIError, match=f"3 hosts are excluded by anti-affinity group '{GROUP}'"):
            api.create_vm("a4", group=GROUP)
        assert "a4" not in [vm.name for vm in api.vms()]
    # Pinned where it does not fit: that host's reason; an unknown host: said plainly.
    refused = cluster.cli("vm", "create", "big", "--host", H1, "--memory", "64G")
    assert refused.returncode != 0
    assert f"host '{H1}' cannot take 'big': it lacks memory (needs 65536 MiB" in refused.stderr
    unknown = cluster.cli("vm", "create", "lost", "--host", "cl-no-such-host")
    assert unknown.returncode != 0 and "no host named 'cl-no-such-host'" in unknown.stderr
    with cluster.api() as api:
        assert sorted(vm.name for vm in api.vms()) == sorted(NAMES)


def test_a_host_lacking_the_image_fetches_it_with_its_progress_in_the_operation(
        cluster: Cluster, spread: Spread) -> None:
    seen = spread.fetch_progress
    fetching = [m for _, m in seen if m.startswith(f"fetching image 'default' to host '{H3}': ")]
    percents = [int(m.rsplit("(", 1)[1].rstrip("%)")) for m in fetching]
    assert len([p for p in percents if 0 < p < 100]) >= 2, seen  # seen while on the way
    assert percents == sorted(percents), seen
    progress = [p for p, _ in seen]
    assert progress == sorted(progress), seen  # the operation never went backwards
    with cluster.api() as api:
        op = api.operations(kind="vm.create", target="a3", limit=1)[0]
    assert op.status == "succeeded" and op.progress == 100, op
    # The host kept the image: its files are the control plane's, byte for byte.
    for file in ("vmlinux", "initramfs.cpio.gz"):
        assert (cluster.node(H3).data_dir / "images" / "default" / file).read_bytes() == \
            (cluster.control.data_dir / "images" / "default" / file).read_bytes()


def test_exec_logs_stats_console_and_resize_work_on_every_host(cluster: Cluster, spread: Spread) -> None:
    with cluster.api() as api:
        for name in NAMES:
            ran = api.exec(name, ["sh", "-c", "uname -n; echo err >&2; exit 3"])
            assert (ran.exit_code, ran.stdout.strip(), ran.stderr.strip()) == (3, name, "err"), ran
            stats = api.vm_stats(name)
            assert (stats.qemu_rss_mib or 0) > 0 and stats.cpu_time_s is not None, stats
            log, _ = api.logs(name)
            assert b"Linux version" in log or b"virtpool" in log, log[-500:]
            resized = api.resize_vm(name, cpu_cap_pct=50)  # live, on its host's cgroup
            assert resized.vm.cpu_cap_pct == 50, resized
    for name in NAMES:
        assert console_echo(cluster, name), f"no echo from the console of {name}\n{cluster.logs()}"
    shown = cluster.cli("vm", "exec", "a3", "--", "cat", "/proc/uptime")
    assert shown.returncode == 0 and shown.stdout.strip(), shown.stderr


def test_stop_start_and_delete_on_every_host_leave_nothing_behind(cluster: Cluster, spread: Spread) -> None:
    with cluster.api(timeout=BOOT_WAIT_S) as api:
        hosts = {vm.name: vm.host for vm in api.vms()}
        for op in [api.stop_vm(name, force=True) for name in NAMES]:
            api.wait_operation(op, timeout=120)
        assert {vm.name: vm.state.value for vm in api.vms()} == dict.fromkeys(NAMES, "stopped")
        assert not any(qemu_pids(node.data_dir) for node in cluster.hosts)
        for op in [api.start_vm(name) for name in NAMES]:
            api.wait_operation(op, timeout=BOOT_WAIT_S)
        for name in NAMES:
            assert api.exec(name, ["true"]).exit_code == 0
        assert {vm.name: vm.host for vm in api.vms()} == hosts  # each started where it was
        for name in NAMES:
            api.delete_vm(name, force=True)
        assert not [vm.name for vm in api.vms() if vm.name in NAMES]
        # No claim is left on any host either.
        for name in HOST_NAMES:
            view = api.inventory_host(name)
            assert (view.vms, view.memory_mib.allocated) == (0, 0), view
    for node in cluster.hosts:
        assert wait_for(lambda: not qemu_pids(node.data_dir), 30), node.host
        vms_dir = node.data_dir / "vms"
        left = sorted(p.name for p in vms_dir.iterdir()) if vms_dir.exists() else []
        assert not [vm_id for vm_id in spread.ids.values() if vm_id in left], (node.host, left)


def console_echo(cluster: Cluster, name: str) -> bool:
    """`virtpool vm console NAME` on a terminal, relayed from the VM's agent by the control
    plane: a command typed there runs in the guest, and Ctrl-] detaches."""
    env = {**os.environ, "VIRTPOOL_URL": cluster.control.url,
           "VIRTPOOL_TOKEN": cluster.control.token or ""}
    main, secondary = pty.openpty()
    proc = subprocess.Popen([VIRTPOOL, "vm", "console", name], stdin=secondary, stdout=secondary,
                            stderr=secondary, env=env, start_new_session=True)
    os.close(secondary)
    try:
        seen = read_until(main, b"Ctrl-]", 30)
        os.write(main, b"echo cl-$((6 * 7))-console\r")
        seen += read_until(main, b"cl-42-console", 30)
        os.write(main, b"\x1d")
        return b"cl-42-console" in seen and proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
