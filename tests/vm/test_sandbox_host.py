"""Host isolation against the real kernel, as root: cgroups with real processes, per-VM users,
and QEMU itself under all three mechanisms at once.

Every group lives under a parent of this test run's own (not ``virtpool``), so that neither a
running agent nor a concurrent test run sees it; every process a test starts is killed and
reaped before the groups are removed.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from virtpool.model.errors import OperationFailed
from virtpool.node.sandbox import cgroups, users
from virtpool.node.sandbox.uid_ranges import UidRange
from virtpool.node.sandbox.cgroups import VMCgroup

BUSY_LOOP = ["sh", "-c", "while :; do :; done"]
VM_A, VM_B = 999_901, 999_902  # VM numbers far from what a real control plane hands out first

Spawn = Callable[..., subprocess.Popen[bytes]]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def parent() -> Iterator[str]:
    """A cgroup parent for this test alone; removed with whatever groups are left in it."""
    name = f"virtpool-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    for vm_id in cgroups.group_names(parent=name):
        cgroups.vm_cgroup(vm_id, parent=name).remove()
    for directory in parent_dirs(name):
        if directory.is_dir():
            os.rmdir(directory)


@pytest.fixture
def spawn(parent: str) -> Iterator[Spawn]:
    """Start processes that are SIGKILLed and reaped at the end (before ``parent`` goes)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory VM users can pass through (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="virtpool-sandbox-", dir="/tmp"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def parent_dirs(name: str) -> list[Path]:
    if cgroups.detect_version() == "v2":
        return [cgroups.CGROUP_ROOT / name]
    return [h / name for h in dict.fromkeys(cgroups._v1_hierarchies(cgroups.CGROUP_ROOT).values())]


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def assert_in_group(pid: int, group: VMCgroup) -> None:
    """/proc/PID/cgroup names the VM's group in every hierarchy virtpool uses."""
    where = f"/{group.parent}/{group.vm_id}"
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    if group.version == "v2":
        assert f"0::{where}" in lines
        return
    placed = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            placed[controller] = path
    for controller in ("cpu", "cpuacct", "memory", "blkio", "cpuset"):
        assert placed.get(controller) == where, (controller, lines)


def test_cgroups_are_available_here() -> None:
    # CI runs these tests as root on a host with cgroups; fail loudly, never skip.
    assert os.geteuid() == 0, "the sandbox tests need root"
    assert cgroups.check() in ("v1", "v2")


# -- cgroups with real processes -----------------------------------------------------------------


def test_attach_moves_the_process_and_remove_waits_for_its_exit(parent: str, spawn: Spawn) -> None:
    group = cgroups.create("vm-a", parent=parent)
    assert cgroups.create("vm-a", parent=parent).group_dirs() == group.group_dirs()  # idempotent
    proc = spawn(["sleep", "30"])
    group.attach(proc.pid)
    assert group.pids() == [proc.pid]
    assert_in_group(proc.pid, group)

    with pytest.raises(OperationFailed, match=rf"still holds processes \[{proc.pid}\]"):
        group.remove(timeout=0.2)
    assert proc.poll() is None  # remove killed nothing

    # The process is on its way out (as a QEMU told to quit is) and is reaped a moment
    # later: remove waits for that instead of failing.
    proc.kill()
    reaper = threading.Timer(0.3, proc.wait)
    reaper.start()
    group.remove(timeout=5)
    reaper.join()
    assert not group.exists()
    group.remove()  # idempotent


def test_a_50_percent_cap_holds_a_busy_loop(parent: str, spawn: Spawn) -> None:
    group = cgroups.create("busy", parent=parent)
    group.set_cpu_cap(50)
    proc = spawn(BUSY_LOOP)
    group.attach(proc.pid)
    before, start = group.usage().cpu_time_ns, time.monotonic()
    time.sleep(3)
    used, elapsed = group.usage().cpu_time_ns - before, time.monotonic() - start
    share = used / (elapsed * 1e9)
    assert 0.05 < share <= 0.60, f"the busy loop used {share:.0%} of one CPU"


def test_two_groups_pinned_to_the_same_cpu(parent: str, spawn: Spawn) -> None:
    host_cpus = proc_status(os.getpid())["Cpus_allowed_list"]
    pids = []
    for vm_id in ("pin-a", "pin-b"):
        group = cgroups.create(vm_id, parent=parent)
        group.set_cpus([0])
        proc = spawn(["sleep", "30"])
        group.attach(proc.pid)
        pids.append(proc.pid)
    assert [proc_status(pid)["Cpus_allowed_list"] for pid in pids] == ["0", "0"]
    group.set_cpus(None)
    assert proc_status(pids[1])["Cpus_allowed_list"] == host_cpus
    with pytest.raises(OperationFailed, match="the host has only the CPUs"):
        group.set_cpus([4096])


def test_the_memory_limit_stops_a_process_that_grows_past_it(parent: str, spawn: Spawn) -> None:
    group = cgroups.create("greedy", parent=parent)
    group.set_memory_limit(64 << 20)
    grow = "import sys; sys.stdin.readline(); b = bytearray(b'x') * (256 << 20); print('survived')"
    proc = spawn([sys.executable, "-c", grow], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    group.attach(proc.pid)
    out, _ = proc.communicate(b"go\n", timeout=30)
    assert proc.returncode == -signal.SIGKILL and b"survived" not in out


# -- per-VM users --------------------------------------------------------------------------------


def test_vm_users_are_numbered_from_their_ranges_base() -> None:
    assert UidRange(0).user(0) == users.VMUser(2_000_000, 2_000_000)
    assert UidRange(3).user(7) == users.VMUser(5_000_007, 5_000_007)
    assert UidRange(0).user(VM_A) == UidRange(0).user(VM_A)
    assert UidRange(0).user(VM_A).uid != UidRange(0).user(VM_B).uid
    with pytest.raises(ValueError):
        UidRange(0).user(users.VM_ID_COUNT)
    users.check_unclaimed(UidRange(0).user(VM_A))
    assert users.spawn_kwargs(5, 6) == {"user": 5, "group": 6, "extra_groups": [users.IMAGE_GID],
                                        "umask": 0o177}


def test_a_vm_user_cannot_open_another_vms_disk(scratch: Path) -> None:
    a, b = UidRange(0).user(VM_A), UidRange(0).user(VM_B)
    vms = scratch / "vms"
    vms.mkdir(mode=0o711)
    image = scratch / "images" / "default"
    image.mkdir(parents=True, mode=0o700)
    (image / "vmlinux").write_bytes(b"kernel")
    os.chmod(image / "vmlinux", 0o600)
    users.share_image_root(scratch / "images")
    users.share_image(image)
    users.check_reachable(vms / "a", a)
    disks = {}
    for name, user in (("a", a), ("b", b)):
        run = vms / name
        run.mkdir()
        (run / "serial.log").write_text("left by a QEMU that ran as root\n")
        disks[name] = run / "disk.qcow2"
        disks[name].write_bytes(bytes(4096))
        users.own_run_dir(run, user)
        users.own_disk(disks[name], user)
        info = run.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (user.uid, user.gid, 0o700)
        info = disks[name].stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (user.uid, 0o600)
        assert (run / "serial.log").stat().st_uid == user.uid

    def as_a(script: str, *args: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/bin/sh", "-c", script, "sh", *map(str, args)], check=False,
                              capture_output=True, text=True, timeout=10, **users.spawn_kwargs(a.uid, a.gid))

    own = as_a('id -u; : >> "$1" && cat "$2" >/dev/null && echo x > "$3/new" && stat -c %a "$3/new"',
               disks["a"], image / "vmlinux", vms / "a")
    assert own.returncode == 0, own.stderr
    assert own.stdout.split() == [str(a.uid), "600"]  # A's files, the image, and the umask

    denied = os.strerror(errno.EACCES)
    other = as_a('exec 3< "$1"', disks["b"])
    assert other.returncode != 0 and denied in other.stderr
    os.chmod(vms / "b", 0o755)  # even with B's run dir open, the disk's own mode holds
    other = as_a('exec 3< "$1"', disks["b"])
    assert other.returncode != 0 and denied in other.stderr


def test_an_unreachable_run_dir_is_named(scratch: Path) -> None:
    hidden = scratch / "private"
    hidden.mkdir(mode=0o700)
    with pytest.raises(OperationFailed, match=f"may not enter {hidden} "):
        users.check_reachable(hidden / "vms" / "x", UidRange(0).user(VM_A))
