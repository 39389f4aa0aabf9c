"""VM cgroups against a fake cgroupfs in tmp_path, in the v1 (separate and co-mounted cpu,cpuacct)
and v2 layouts: which files get which values, idempotence, removal, orphan cleanup, errors.

The fake kernel stands in for the three things a plain directory tree does differently from
cgroupfs: mkdir fills a group with its control files, rmdir refuses a group with processes,
and writes to cgroup.procs / cgroup.subtree_control add to the file instead of replacing it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from virtpool.model.errors import OperationFailed
from virtpool.node.sandbox import cgroups
from virtpool.node.sandbox.cgroups import CgroupUsage, V1Cgroup, V2Cgroup

V1_DEFAULTS = {
    "cpu": {"cpu.shares": "1024", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1"},
    "cpuacct": {"cpuacct.usage": "0"},
    "memory": {"memory.limit_in_bytes": "9223372036854771712", "memory.usage_in_bytes": "0"},
    "blkio": {"blkio.weight": "100"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},  # the kernel leaves a new group's empty
}
V2_DEFAULTS = {
    "cgroup.controllers": "", "cgroup.subtree_control": "",
    "cpu.weight": "100", "cpu.max": "max 100000", "cpu.stat": "usage_usec 0\nuser_usec 0\n",
    "memory.max": "max", "memory.current": "0", "cpuset.cpus": "", "io.max": "",
}
V2_ROOT_CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc"

LAYOUTS = ["v1", "v1-comounted", "v2"]


class FakeKernel:
    """Just enough of cgroupfs semantics on a tmp_path tree."""

    def __init__(self, root: Path, layout: str) -> None:
        self.root = root
        self.layout = layout
        self.writes: list[tuple[Path, str]] = []
        if layout == "v2":
            self._fill(root, V2_DEFAULTS)
            (root / "cgroup.controllers").write_text(V2_ROOT_CONTROLLERS)
            (root / "cpuset.cpus.effective").write_text("0-3")
            return
        names = ["cpu", "cpuacct", "memory", "blkio", "cpuset", "pids"]
        if layout == "v1-comounted":
            names = ["cpu,cpuacct", "memory", "blkio", "cpuset", "pids"]
        for name in names:
            (root / name).mkdir()
            self._fill_v1(root / name, name)
        if layout == "v1-comounted":  # as systemd does it
            (root / "cpu").symlink_to("cpu,cpuacct")
            (root / "cpuacct").symlink_to("cpu,cpuacct")
        (root / "unified").mkdir()  # a hybrid host's empty v2 tree must not count as v2
        (root / "unified" / "cgroup.procs").write_text("")
        (root / "cpuset" / "cpuset.cpus").write_text("0-3")
        (root / "cpuset" / "cpuset.mems").write_text("0")

    @staticmethod
    def _fill(directory: Path, files: dict[str, str]) -> None:
        (directory / "cgroup.procs").write_text("")
        for name, value in files.items():
            (directory / name).write_text(value)

    def _fill_v1(self, directory: Path, hierarchy: str) -> None:
        files: dict[str, str] = {}
        for controller in hierarchy.split(","):
            files.update(V1_DEFAULTS.get(controller, {}))
        self._fill(directory, files)

    def mkdir(self, path: Path) -> None:
        if path.is_dir():
            return
        path.mkdir()
        if self.layout == "v2":
            self._fill(path, V2_DEFAULTS)
            enabled = (path.parent / "cgroup.subtree_control").read_text()
            (path / "cgroup.controllers").write_text(enabled)
        else:
            self._fill_v1(path, path.relative_to(self.root).parts[0])

    def rmdir(self, path: Path) -> None:
        if (path / "cgroup.procs").read_text().split():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        for child in path.iterdir():
            if child.is_dir():
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
            child.unlink()
        os.rmdir(path)

    def wrap_write(self, real: Callable[..., None]) -> Callable[..., None]:
        def write(path: Path, value: str, what: str, hints: dict[int, str] | None = None) -> None:
            before = path.read_text().split() if path.exists() else []
            real(path, value, what, hints)
            self.writes.append((path, value))
            if path.name == "cgroup.procs":
                path.write_text("\n".join([*before, value]) + "\n")
            elif path.name == "cgroup.subtree_control":
                enabled = [c for c in before if c != value[1:]]
                if value.startswith("+"):
                    enabled.append(value[1:])
                path.write_text(" ".join(enabled))

        return write

    def procs(self, group: Path, pids: list[int]) -> None:
        (group / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))


@pytest.fixture(params=LAYOUTS)
def kernel(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    root = tmp_path / "cgroup"
    root.mkdir()
    fake = FakeKernel(root, request.param)
    monkeypatch.setattr(cgroups, "_mkdir_group", fake.mkdir)
    monkeypatch.setattr(cgroups, "_rmdir_group", fake.rmdir)
    monkeypatch.setattr(cgroups, "_write", fake.wrap_write(cgroups._write))
    return fake


def v1_dirs(root: Path, layout: str, vm: str = "vm1") -> dict[str, Path]:
    cpu = "cpu,cpuacct" if layout == "v1-comounted" else "cpu"
    acct = "cpu,cpuacct" if layout == "v1-comounted" else "cpuacct"
    names = {"cpu": cpu, "cpuacct": acct, "memory": "memory", "blkio": "blkio", "cpuset": "cpuset"}
    return {c: root / n / "virtpool" / vm for c, n in names.items()}


def read(path: Path) -> str:
    return path.read_text().strip()


# -- detection ---------------------------------------------------------------------------------


def test_version_is_detected_from_the_layout(kernel: FakeKernel) -> None:
    expected = "v2" if kernel.layout == "v2" else "v1"
    assert cgroups.detect_version(kernel.root) == expected
    assert cgroups.available(kernel.root)
    group = cgroups.vm_cgroup("vm1", root=kernel.root)
    assert isinstance(group, V2Cgroup if expected == "v2" else V1Cgroup)
    assert not group.exists()


def test_no_cgroupfs_means_unavailable(tmp_path: Path) -> None:
    assert cgroups.detect_version(tmp_path) is None
    assert not cgroups.available(tmp_path)
    with pytest.raises(OperationFailed, match=f"no cgroup hierarchy is mounted at {tmp_path}"):
        cgroups.vm_cgroup("vm1", root=tmp_path)


def test_v1_without_a_memory_hierarchy_is_refused(tmp_path: Path) -> None:
    for name in ("cpu", "cpuacct"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cgroup.procs").write_text("")
    with pytest.raises(OperationFailed, match="lacks the controllers memory"):
        cgroups.check(tmp_path)
    with pytest.raises(OperationFailed, match="hierarchies memory are not mounted"):
        cgroups.vm_cgroup("vm1", root=tmp_path)


def test_v2_without_the_memory_controller_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io pids")
    (tmp_path / "cgroup.subtree_control").write_text("")
    assert not cgroups.available(tmp_path)
    with pytest.raises(OperationFailed, match="controllers memory are not available") as err:
        cgroups.create("vm1", root=tmp_path)
    assert "cgroup.controllers" in str(err.value)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "x\0y"])
def test_a_vm_id_must_be_one_path_component(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one path component"):
        V2Cgroup(bad, root=tmp_path)


# -- create ------------------------------------------------------------------------------------


def test_create_makes_the_group_in_every_hierarchy(kernel: FakeKernel) -> None:
    group = cgroups.create("vm1", root=kernel.root)
    assert group.exists()
    if kernel.layout == "v2":
        assert group.group_dirs() == [kernel.root / "virtpool" / "vm1"]
        # Controllers enabled at the root and in virtpool/, so that vm1 has their files.
        assert set(read(kernel.root / "cgroup.subtree_control").split()) == {"cpu", "memory", "io", "cpuset"}
        assert set(read(kernel.root / "virtpool" / "cgroup.subtree_control").split()) == {
            "cpu", "memory", "io", "cpuset"}
        return
    dirs = v1_dirs(kernel.root, kernel.layout)
    assert all(d.is_dir() for d in dirs.values())
    assert len(group.group_dirs()) == (4 if kernel.layout == "v1-comounted" else 5)
    # v1 cpuset: the parent and the group get the root's CPUs and memory nodes, else no
    # process could join them.
    for directory in (dirs["cpuset"].parent, dirs["cpuset"]):
        assert read(directory / "cpuset.cpus") == "0-3"
        assert read(directory / "cpuset.mems") == "0"


def test_create_is_idempotent_and_keeps_settings(kernel: FakeKernel) -> None:
    group = cgroups.create("vm1", root=kernel.root)
    group.set_cpu_cap(50)
    group.set_cpus([1])
    writes_before = len(kernel.writes)
    again = cgroups.create("vm1", root=kernel.root)
    assert again.group_dirs() == group.group_dirs()
    assert len(kernel.writes) == writes_before  # nothing rewritten: all was in place
    if kernel.layout == "v2":
        assert read(group.group_dirs()[0] / "cpu.max") == "50000 100000"
        assert read(group.group_dirs()[0] / "cpuset.cpus") == "1"
    else:
        dirs = v1_dirs(kernel.root, kernel.layout)
        assert read(dirs["cpu"] / "cpu.cfs_quota_us") == "50000"
        assert read(dirs["cpuset"] / "cpuset.cpus") == "1"


def test_a_second_vm_gets_its_own_group(kernel: FakeKernel) -> None:
    a = cgroups.create("a", root=kernel.root)
    b = cgroups.create("b", root=kernel.root)
    a.set_memory_limit(1 << 30)
    assert set(a.group_dirs()).isdisjoint(b.group_dirs())
    assert cgroups.group_names(root=kernel.root) == {"a", "b"}
    memory_file = "memory.max" if kernel.layout == "v2" else "memory.limit_in_bytes"
    b_memory = (b.group_dirs()[0] if kernel.layout == "v2"
                else v1_dirs(kernel.root, kernel.layout, "b")["memory"])
    assert read(b_memory / memory_file) in ("max", "9223372036854771712")


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("weight", "shares"), [
    (100, 1024), (1, 10), (50, 512), (300, 3072), (10000, 102400),
])
def test_cpu_weight(kernel: FakeKernel, weight: int, shares: int) -> None:
    group = cgroups.create("vm1", root=kernel.root)
    group.set_cpu_weight(weight)
    if kernel.layout == "v2":
        assert read(group.group_dirs()[0] / "cpu.weight") == str(weight)  # the same scale
    else:
        assert read(v1_dirs(kernel.root, kernel.layout)["cpu"] / "cpu.shares") == str(shares)


@pytest.mark.parametrize("weight", [0, 10001, -5])
def test_cpu_weight_out_of_range_is_a_bug(kernel: FakeKernel, weight: int) -> None:
    group = cgroups.create("vm1", root=kernel.root)
    with pytest.raises(ValueError, match="outside 1..10000"):
        group.set_cpu_weight(weight)


@pytest.mark.parametrize(("pct", "v1_quota", "v2_max"), [
    (50, "50000", "50000 100000"),
    (250, "250000", "250000 100000"),  # more than one CPU for a multi-vCPU VM
    (1, "1000", "1000 100000"),
    (None, "-1", "max 100000"),
])
def test_cpu_cap(kernel: FakeKernel, pct: int | None, v1_quota: str, v2_max: str) -> None:
    group = cgroups.create("vm1", root=kernel.root)
    group.set_cpu_cap(75)
    group.set_cpu_cap(pct)
    if kernel.layout == "v2":
        assert read(group.group_dirs()[0] / "cpu.max") == v2_max
    else:
        cpu = v1_dirs(kernel.root, kernel.layout)["cpu"]
        assert read(cpu / "cpu.cfs_quota_us") == v1_quota
        assert read(cpu / "cpu.cfs_period_us") == "100000"
    with pytest.raises(ValueError, match="positive percentage"):
        group.set_cpu_cap(0)


def test_cpu_pinning_and_unpinning(kernel: FakeKernel) -> None:
    group = cgroups.create("vm1", root=kernel.root)
    group.set_cpus([3, 1, 3])
    cpuset = group.group_dirs()[0] if kernel.layout == "v2" else v1_dirs(kernel.root, kernel.layout)["cpuset"]
    assert read(cpuset / "cpuset.cpus") == "1,3"
    group.set_cpus(None)
    # v2: empty means "the parent's"; v1 has no such value: the parent's list is copied.
    assert read(cpuset / "cpuset.cpus") == ("" if kernel.layout == "v2" else "0-3")
    with pytest.raises(ValueError, match="at least one CPU"):
        group.set_cpus([])


def test_memory_limit(kernel: FakeKernel) -> None:
    group = cgroups.create("vm1", root=kernel.root)
    group.set_memory_limit(384 << 20)
    if kernel.layout == "v2":
        path = group.group_dirs()[0] / "memory.max"
        assert read(path) == str(384 << 20)
        group.set_memory_limit(None)
        assert read(path) == "max"
    else:
        path = v1_dirs(kernel.root, kernel.layout)["memory"] / "memory.limit_in_bytes"
        assert read(path) == str(384 << 20)
        group.set_memory_limit(None)
        assert read(path) == "-1"


def test_usage(kernel: FakeKernel) -> None:
    group = cgroups.create("vm1", root=kernel.root)
    if kernel.layout == "v2":
        directory = group.group_dirs()[0]
        (directory / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
        (directory / "memory.current").write_text("300000000\n")
    else:
        dirs = v1_dirs(kernel.root, kernel.layout)
        (dirs["cpuacct"] / "cpuacct.usage").write_text("1500000000\n")
        (dirs["memory"] / "memory.usage_in_bytes").write_text("300000000\n")
    assert group.usage() == CgroupUsage(cpu_time_ns=1_500_000_000, memory_bytes=300_000_000)


def test_setting_before_create_names_the_missing_file(kernel: FakeKernel) -> None:
    group = cgroups.vm_cgroup("vm1", root=kernel.root)
    with pytest.raises(OperationFailed, match="does not exist") as err:
        group.set_cpu_weight(100)
    assert "cpu.weight" in str(err.value) or "cpu.shares" in str(err.value)
    assert "create the group first" in str(err.value)


def test_a_kernel_refusal_names_file_value_and_hint(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = cgroups.create("vm1", root=kernel.root)

    def refuse(fd: int, data: bytes) -> int:
        raise OSError(errno.ESRCH, os.strerror(errno.ESRCH))

    monkeypatch.setattr(cgroups.os, "write", refuse)
    with pytest.raises(OperationFailed) as err:
        group.attach(4242)
    message = str(err.value)
    assert "'4242'" in message and "cgroup.procs" in message and "process 4242 has exited" in message


# -- attach, pids, remove ----------------------------------------------------------------------


def test_attach_writes_the_pid_into_every_hierarchy(kernel: FakeKernel) -> None:
    group = cgroups.create("vm1", root=kernel.root)
    group.attach(1234)
    for directory in group.group_dirs():
        assert read(directory / "cgroup.procs").split() == ["1234"]
    assert group.pids() == [1234]
    group.attach(1235)
    assert group.pids() == [1234, 1235]


def test_remove_waits_then_refuses_a_group_with_processes(kernel: FakeKernel) -> None:
    group = cgroups.create("vm1", root=kernel.root)
    group.attach(1234)
    with pytest.raises(OperationFailed, match=r"still holds processes \[1234\]") as err:
        group.remove(timeout=0.1)
    assert "does not kill" in str(err.value)
    assert group.exists()


def test_remove_an_empty_group_everywhere_and_again(kernel: FakeKernel) -> None:
    group = cgroups.create("vm1", root=kernel.root)
    group.attach(1234)
    for directory in group.group_dirs():
        kernel.procs(directory, [])  # the process exited
    group.remove()
    assert not group.exists()
    assert not any(d.exists() for d in group.group_dirs())
    parent = kernel.root / "virtpool" if kernel.layout == "v2" else kernel.root / "memory" / "virtpool"
    assert parent.is_dir()  # the parent is shared by every VM and stays
    group.remove()  # idempotent
    cgroups.vm_cgroup("never-made", root=kernel.root).remove()


def test_remove_tolerates_a_group_gone_in_some_hierarchies(kernel: FakeKernel) -> None:
    group = cgroups.create("vm1", root=kernel.root)
    kernel.rmdir(group.group_dirs()[0])
    group.remove()
    assert not group.exists()


def test_cleanup_orphans_removes_only_unclaimed_empty_groups(kernel: FakeKernel) -> None:
    cgroups.create("claimed", root=kernel.root)
    cgroups.create("orphan", root=kernel.root)
    busy = cgroups.create("busy-orphan", root=kernel.root)
    busy.attach(999)
    # Young groups may be another agent's start in progress: left alone until they age.
    assert cgroups.cleanup_orphans(["claimed"], root=kernel.root) == []
    removed = cgroups.cleanup_orphans(["claimed", "not-on-this-host"], root=kernel.root, min_age_s=0)
    assert removed == ["orphan"]
    assert cgroups.group_names(root=kernel.root) == {"claimed", "busy-orphan"}
    assert busy.pids() == [999]


def test_a_different_parent_keeps_groups_apart(kernel: FakeKernel) -> None:
    mine = cgroups.create("vm1", root=kernel.root, parent="virtpool-test")
    assert all("virtpool-test" in d.parts for d in mine.group_dirs())
    assert cgroups.group_names(root=kernel.root) == set()
    assert cgroups.group_names(root=kernel.root, parent="virtpool-test") == {"vm1"}
