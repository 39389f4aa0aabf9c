"""Isolation on the host, read from the kernel: each VM's QEMU is its own unprivileged user,
under seccomp, in its own cgroups, and gets only the CPU it was promised."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Server, wait_for

BUSY_LOOP = "while :; do :; done >/dev/null 2>&1 </dev/null &"


def qemu_pid(server: Server, name: str) -> int:
    return int((run_dir(server, name) / "qemu.pid").read_text())


def run_dir(server: Server, name: str) -> Path:
    return server.data_dir / "vms" / server.api().vm(name).id


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def cgroup_dirs(pid: int) -> dict[str, str]:
    """controller -> path, from /proc/PID/cgroup (v1 lines: id:controllers:path)."""
    found = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") or [""]:
            found[controller] = path
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.fixture(scope="module")
def pair(server: Server) -> tuple[str, str]:
    api = server.api()
    for name in ("iso-a", "iso-b"):
        api.create_vm(name, start=True)
    for name in ("iso-a", "iso-b"):
        assert api.wait_vm(name).state == "running"
    return "iso-a", "iso-b"


def test_each_qemu_is_its_own_unprivileged_user_under_seccomp(server: Server, pair: tuple[str, str]) -> None:
    uids = set()
    for name in pair:
        info = status(qemu_pid(server, name))
        uid = int(info["Uid"].split()[0])
        assert uid != 0 and info["Uid"].split() == [str(uid)] * 4
        assert info["Seccomp"] == "2"
        assert info["CapEff"] == "0000000000000000"
        assert info["NoNewPrivs"] == "1"
        uids.add(uid)
    assert len(uids) == 2, "two VMs share a uid"


def test_run_dir_and_sockets_are_private_to_the_vm_user(server: Server, pair: tuple[str, str]) -> None:
    for name in pair:
        directory = run_dir(server, name)
        uid = int(status(qemu_pid(server, name))["Uid"].split()[0])
        info = directory.stat()
        assert info.st_uid == uid and stat.S_IMODE(info.st_mode) == 0o700
        for sock in ("qmp.sock", "qga.sock", "console.sock"):
            info = (directory / sock).stat()
            assert stat.S_ISSOCK(info.st_mode)
            assert info.st_uid == uid and stat.S_IMODE(info.st_mode) & 0o077 == 0, sock
        disk = (directory / "disk.qcow2").stat()
        assert disk.st_uid == uid and stat.S_IMODE(disk.st_mode) == 0o600


def test_one_vms_user_cannot_open_another_vms_disk(server: Server, pair: tuple[str, str]) -> None:
    a, b = pair
    uid_a = int(status(qemu_pid(server, a))["Uid"].split()[0])
    disk_b = run_dir(server, b) / "disk.qcow2"
    own_disk = run_dir(server, a) / "disk.qcow2"
    probe = ["python3", "-c", "import sys; open(sys.argv[1], 'rb').read(1)"]
    mine = subprocess.run([*probe, str(own_disk)], user=uid_a, group=uid_a, extra_groups=[],
                          capture_output=True, text=True)
    assert mine.returncode == 0, mine.stderr  # the probe itself works as that user
    theirs = subprocess.run([*probe, str(disk_b)], user=uid_a, group=uid_a, extra_groups=[],
                            capture_output=True, text=True)
    assert theirs.returncode != 0 and "PermissionError" in theirs.stderr and "Errno 13" in theirs.stderr


def test_the_agent_is_not_fooled_by_links_a_compromised_qemu_plants(server: Server) -> None:
    """A QEMU taken over by its guest owns its run dir and could swap files for symlinks."""
    api = server.api()
    for name in ("prey", "spy"):
        api.create_vm(name, start=True)
    for name in ("prey", "spy"):
        assert api.wait_vm(name).state == "running"
    spy = run_dir(server, "spy")
    # Its serial log pointed at a host secret: the logs endpoint refuses, and shows nothing of it.
    (spy / "serial.log").unlink()
    (spy / "serial.log").symlink_to("/etc/shadow")
    logs = server.cli("vm", "logs", "spy")
    assert logs.returncode != 0 and "root:" not in logs.stdout
    assert "symlink" in logs.stderr
    # Its guest-agent socket pointed at another VM's. The agent's channel to spy's guest agent
    # was opened (and its listener checked) at boot and is kept, so an exec still runs in spy.
    (spy / "qga.sock").unlink()
    (spy / "qga.sock").symlink_to(run_dir(server, "prey") / "qga.sock")
    ran = server.cli("vm", "exec", "spy", "--", "hostname")
    assert ran.returncode == 0 and ran.stdout == "spy\n", (ran.stdout, ran.stderr)
    # A new agent (`up` restarted) looks at the run dirs afresh: it does not take spy back as
    # running, and exec refuses instead of running in prey.
    server.stop()
    server.start()
    api = server.api()
    assert api.vm("spy").state.value != "running"
    ran = server.cli("vm", "exec", "spy", "--", "hostname")
    assert ran.returncode != 0 and "prey" not in ran.stdout, (ran.stdout, ran.stderr)
    assert server.cli("vm", "exec", "prey", "--", "hostname").stdout == "prey\n"
    for name in ("prey", "spy"):
        api.delete_vm(name, force=True)


def test_each_qemu_has_its_own_cgroup_which_goes_with_the_vm(server: Server) -> None:
    api = server.api()
    api.create_vm("iso-cg", start=True)
    assert api.wait_vm("iso-cg").state == "running"
    vm_id = api.vm("iso-cg").id
    groups = cgroup_dirs(qemu_pid(server, "iso-cg"))
    for controller in ("cpu", "memory"):
        assert groups[controller].endswith(f"/virtpool/{vm_id}"), groups
    limit = Path(f"/sys/fs/cgroup/memory{groups['memory']}/memory.limit_in_bytes")
    assert int(limit.read_text()) == (256 + 128) << 20  # guest RAM + QEMU's measured overhead
    api.delete_vm("iso-cg", force=True)
    assert not Path(f"/sys/fs/cgroup/cpu/virtpool/{vm_id}").exists()
    assert not Path(f"/sys/fs/cgroup/memory/virtpool/{vm_id}").exists()


def test_a_busy_vm_capped_at_50_percent_uses_at_most_60_percent_of_a_cpu(server: Server) -> None:
    api = server.api()
    api.create_vm("capped", cpu_cap_pct=50, start=True)
    assert api.wait_vm("capped").state == "running"
    api.exec("capped", ["sh", "-c", BUSY_LOOP])
    pid = qemu_pid(server, "capped")
    time.sleep(1)
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(5)
    share = (cpu_seconds(pid) - before) / (time.monotonic() - start)
    assert share <= 0.60, share
    assert share >= 0.30, f"the busy loop hardly ran ({share}): the test would prove nothing"
    # Lifted live, it takes what the host gives it: beyond the cap (a whole CPU on an idle
    # host). Another test's guests may share the two cores for a while, so it gets a few
    # windows to show it.
    assert server.cli("vm", "resize", "capped", "--cpu-cap", "0").returncode == 0
    shares: list[float] = []

    def beyond_the_cap() -> bool:
        before, start = cpu_seconds(pid), time.monotonic()
        time.sleep(3)
        shares.append((cpu_seconds(pid) - before) / (time.monotonic() - start))
        return shares[-1] > 0.70

    assert wait_for(beyond_the_cap, timeout=30, interval=0), shares
    api.delete_vm("capped", force=True)


def test_weights_1_and_3_on_one_host_cpu_share_it_about_1_to_3(server: Server) -> None:
    api = server.api()
    for name, weight in (("light", 1), ("heavy", 3)):
        api.create_vm(name, cpu_weight=weight, cpu_affinity=[0], start=True)
    for name in ("light", "heavy"):
        assert api.wait_vm(name).state == "running"
        api.exec(name, ["sh", "-c", BUSY_LOOP])
    pids = {name: qemu_pid(server, name) for name in ("light", "heavy")}
    for pid in pids.values():
        assert status(pid)["Cpus_allowed_list"] == "0"
    time.sleep(1)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(6)
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    ratio = used["heavy"] / used["light"]
    assert 2.0 <= ratio <= 4.5, used
    for name in ("light", "heavy"):
        api.delete_vm(name, force=True)


def test_cgroups_of_vms_left_running_are_kept_across_a_restart(server: Server, pair: tuple[str, str]) -> None:
    a, _ = pair
    vm_id = server.api().vm(a).id
    server.stop()
    server.start()
    assert wait_for(lambda: server.api().vm(a).state == "running")
    assert Path(f"/sys/fs/cgroup/cpu/virtpool/{vm_id}").exists()
    assert server.api().exec(a, ["true"]).exit_code == 0
