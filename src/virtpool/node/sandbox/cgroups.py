"""A control group per VM: what share of the host's CPU and memory one QEMU may take.

Layout (``root`` is ``/sys/fs/cgroup`` unless a caller, such as a test, hands in another)::

    cgroup v1  <root>/<hierarchy>/virtpool/<vm_id>   for each of the hierarchies that carry
               cpu, cpuacct (often co-mounted as "cpu,cpuacct"), memory, blkio and cpuset
    cgroup v2  <root>/virtpool/<vm_id>               with cpu, memory, io and cpuset enabled
               in the cgroup.subtree_control of <root> and of <root>/virtpool

The version is detected at runtime: a ``cgroup.controllers`` file at the root means the
unified (v2) hierarchy is mounted there; otherwise the v1 hierarchies are used (a "hybrid"
host, with an empty v2 tree at ``<root>/unified``, counts as v1).

virtpool's CPU weight scale is cgroup v2's: 1..10000, default 100 (``VMSpec.cpu_weight``).
On v1 it becomes ``cpu.shares = 1024 * weight / 100`` (at least 2), so 100 is the kernel's
default 1024 on both. A CPU cap is a percentage of ONE host CPU (200 = two full CPUs).

This module only writes the cgroup files, with plain file writes. It never shells out, never
kills a process (``remove`` waits for a group to empty and fails if it does not), and never
touches a group outside ``<parent>`` (``virtpool`` by default).
"""

from __future__ import annotations

import errno
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from virtpool.model.errors import OperationFailed

CgroupVersion = Literal["v1", "v2"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "virtpool"

CPU_WEIGHT_MIN = 1
CPU_WEIGHT_DEFAULT = 100  # = cgroup v2's default cpu.weight, = 1024 cpu.shares on v1
CPU_WEIGHT_MAX = 10_000  # cgroup v2's cpu.weight range is 1..10000
V1_SHARES_AT_DEFAULT = 1024  # the kernel's default cpu.shares
V1_SHARES_MIN = 2  # the kernel's minimum cpu.shares
CFS_PERIOD_US = 100_000  # the kernel's default CFS period (100 ms); a cap is a quota per period
REMOVE_WAIT_S = 2.0  # a QEMU that was just told to quit may take a moment to leave its group
POLL_S = 0.02

# The v1 hierarchies a VM's group lives in. Required ones must be mounted; optional ones are
# used when present (blkio only accounts I/O today; cpuset is needed by set_cpus only).
V1_REQUIRED = ("cpu", "cpuacct", "memory")
V1_OPTIONAL = ("blkio", "cpuset")
V2_REQUIRED = ("cpu", "memory")
V2_OPTIONAL = ("io", "cpuset")

HINT_ROOT = (
    "virtpool must run as root to confine VMs in cgroups (or be given ownership of the "
    "virtpool groups by the host's init system)"
)


@dataclass(frozen=True)
class CgroupUsage:
    """What a VM's group has consumed: CPU time since creation, memory now."""

    cpu_time_ns: int
    memory_bytes: int


# -- file access ------------------------------------------------------------------------------


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError as err:
        raise OperationFailed(
            f"cannot {what}: {path} does not exist",
            hint="the controller is not mounted or not enabled for this group",
        ) from err
    except OSError as err:
        raise OperationFailed(f"cannot {what}: reading {path} failed ({err.strerror})") from err


def _write(path: Path, value: str, what: str, hints: dict[int, str] | None = None) -> None:
    """One write of ``value`` to a cgroup file; the kernel checks it at write() time."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except FileNotFoundError as err:
        raise OperationFailed(
            f"cannot {what}: {path} does not exist",
            hint="the controller is not mounted or not enabled for this group; "
            "create the group first (VMCgroup.create)",
        ) from err
    except PermissionError as err:
        raise OperationFailed(f"cannot {what}: no permission to write {path}", hint=HINT_ROOT) from err
    try:
        os.write(fd, value.encode())
    except OSError as err:
        hint = (hints or {}).get(err.errno or 0)
        raise OperationFailed(
            f"cannot {what}: the kernel refused '{value}' in {path} ({os.strerror(err.errno or 0)})",
            hint=hint,
        ) from err
    finally:
        os.close(fd)


def _mkdir_group(path: Path) -> None:
    """Create one cgroup directory (the kernel fills it with its control files)."""
    try:
        path.mkdir(exist_ok=True)
    except PermissionError as err:
        raise OperationFailed(f"cannot create cgroup {path}: permission denied", hint=HINT_ROOT) from err
    except OSError as err:
        raise OperationFailed(f"cannot create cgroup {path}: {err.strerror}") from err


def _rmdir_group(path: Path) -> None:
    """Remove one empty cgroup directory; raises OSError as rmdir(2) does (EBUSY if in use)."""
    os.rmdir(path)


def _read_pids(procs: Path) -> list[int]:
    try:
        text = procs.read_text()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise OperationFailed(f"cannot list the processes in {procs} ({err.strerror})") from err
    return [int(line) for line in text.split()]


def _check_name(vm_id: str) -> None:
    if not vm_id or vm_id in (".", "..") or "/" in vm_id or "\0" in vm_id or len(vm_id) > 200:
        raise ValueError(f"'{vm_id}' cannot name a cgroup: it must be one path component")


def _cpu_list(cpus: Iterable[int]) -> str:
    ordered = sorted(set(cpus))
    if not ordered or ordered[0] < 0:
        raise ValueError(f"a CPU list must name at least one CPU, all >= 0 (got {ordered})")
    return ",".join(str(c) for c in ordered)


# -- detection --------------------------------------------------------------------------------


def detect_version(root: Path = CGROUP_ROOT) -> CgroupVersion | None:
    """``"v2"`` if the unified hierarchy is mounted at ``root``, ``"v1"`` if v1 ones are, else None."""
    if (root / "cgroup.controllers").is_file():
        return "v2"
    if {"cpu", "memory"} & _v1_hierarchies(root).keys():
        return "v1"
    return None


def _v1_hierarchies(root: Path) -> dict[str, Path]:
    """Controller name → the root of the v1 hierarchy carrying it ("cpu,cpuacct" is found for both)."""
    found: dict[str, Path] = {}
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return found
    for entry in entries:
        if not (entry / "cgroup.procs").is_file():
            continue
        for controller in entry.name.split(","):
            if controller in (*V1_REQUIRED, *V1_OPTIONAL):
                # Resolved, so that "cpu" -> "cpu,cpuacct" and the real directory are one.
                found.setdefault(controller, entry.resolve())
    return found


def check(root: Path = CGROUP_ROOT) -> CgroupVersion:
    """The cgroup version virtpool will use at ``root``; OperationFailed saying why none can be."""
    version = detect_version(root)
    if version is None:
        raise OperationFailed(
            f"no cgroup hierarchy is mounted at {root}",
            hint="mount cgroup2 there (or the v1 cpu, cpuacct and memory hierarchies)",
        )
    if version == "v1":
        hierarchies = _v1_hierarchies(root)
        missing = [c for c in V1_REQUIRED if c not in hierarchies]
        writable = {p for c, p in hierarchies.items() if c in V1_REQUIRED}
    else:
        available = set(_read(root / "cgroup.controllers", "list cgroup controllers").split())
        missing = [c for c in V2_REQUIRED if c not in available]
        writable = {root}
    if missing:
        raise OperationFailed(
            f"cgroup {version} at {root} lacks the controllers {', '.join(missing)}",
            hint="enable them in the kernel / init system, or run virtpool without cgroups",
        )
    for path in writable:
        if not os.access(path, os.W_OK):
            raise OperationFailed(f"cannot create cgroups under {path}: not writable", hint=HINT_ROOT)
    return version


def available(root: Path = CGROUP_ROOT) -> bool:
    """True if VM groups can be made here (a cgroup version with its controllers, writable)."""
    try:
        check(root)
    except OperationFailed:
        return False
    return True


# -- the group of one VM ----------------------------------------------------------------------


class VMCgroup(ABC):
    """The cgroup(s) of one VM. Obtain one with ``vm_cgroup`` or ``create``."""

    version: ClassVar[CgroupVersion]

    def __init__(self, vm_id: str, *, root: Path = CGROUP_ROOT, parent: str = PARENT) -> None:
        _check_name(vm_id)
        _check_name(parent)
        self.vm_id = vm_id
        self.root = root
        self.parent = parent

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.vm_id!r}, root={str(self.root)!r})"

    # Each backend says where its group directories are, how to create them, and its files.

    @abstractmethod
    def group_dirs(self) -> list[Path]:
        """The VM's group directory in each hierarchy (one on v2)."""

    @abstractmethod
    def create(self) -> VMCgroup:
        """Make the group (and the parent); idempotent: an existing group keeps its settings."""

    @abstractmethod
    def set_cpu_weight(self, weight: int) -> None:
        """This VM's share of CPU under contention, on virtpool's 1..10000 scale (100 = normal)."""

    @abstractmethod
    def set_cpu_cap(self, pct: int | None) -> None:
        """At most ``pct`` % of one host CPU (may exceed 100); None removes the cap."""

    @abstractmethod
    def set_cpus(self, cpus: Iterable[int] | None) -> None:
        """Pin to these host CPUs; None allows every CPU the parent group has."""

    @abstractmethod
    def set_memory_limit(self, limit_bytes: int | None) -> None:
        """Hard memory limit of the group (QEMU's whole footprint); None = unlimited."""

    @abstractmethod
    def usage(self) -> CgroupUsage:
        """CPU time used since the group was made, and memory charged now."""

    # Shared by both versions.

    def exists(self) -> bool:
        return any(d.is_dir() for d in self.group_dirs())

    def attach(self, pid: int) -> None:
        """Move the whole process (every thread) ``pid`` into the group, in every hierarchy."""
        for directory in self.group_dirs():
            _write(
                directory / "cgroup.procs", str(pid), f"move process {pid} into cgroup {directory}",
                hints={
                    errno.ESRCH: f"process {pid} has exited",
                    errno.ENOSPC: "the group's cpuset.cpus or cpuset.mems is empty; "
                    "VMCgroup.create fills them in",
                    errno.EBUSY: "on cgroup v2 a process can only join a group that has no "
                    "controllers enabled in its own subtree_control",
                },
            )

    def pids(self) -> list[int]:
        """The processes in the group (in any of its hierarchies), sorted."""
        found: set[int] = set()
        for directory in self.group_dirs():
            found.update(_read_pids(directory / "cgroup.procs"))
        return sorted(found)

    def remove(self, timeout: float = REMOVE_WAIT_S) -> None:
        """Remove the group once it is empty; waits up to ``timeout`` for it to empty.

        Idempotent, and a group already gone is fine. It kills nothing: a group that still
        holds processes after ``timeout`` is an OperationFailed naming them.
        """
        deadline = time.monotonic() + timeout
        for directory in self.group_dirs():
            while True:
                if not directory.is_dir():
                    break
                try:
                    _rmdir_group(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    # EBUSY while processes (or exiting ones not yet reaped) remain.
                    if err.errno != errno.EBUSY or time.monotonic() >= deadline:
                        pids = _read_pids(directory / "cgroup.procs")
                        raise OperationFailed(
                            f"cannot remove cgroup {directory}: "
                            + (f"it still holds processes {pids}" if pids else
                               f"{os.strerror(err.errno or 0)}"),
                            hint="stop the VM's QEMU (and reap it) first; virtpool does not "
                            "kill processes to empty a group",
                        ) from err
                    time.sleep(POLL_S)


class V1Cgroup(VMCgroup):
    """cgroup v1: one directory per hierarchy."""

    version: ClassVar[CgroupVersion] = "v1"

    def __init__(self, vm_id: str, *, root: Path = CGROUP_ROOT, parent: str = PARENT) -> None:
        super().__init__(vm_id, root=root, parent=parent)
        self.hierarchies = _v1_hierarchies(root)
        missing = [c for c in V1_REQUIRED if c not in self.hierarchies]
        if missing:
            raise OperationFailed(
                f"the cgroup v1 hierarchies {', '.join(missing)} are not mounted under {root}",
                hint="mount them (mount -t cgroup -o <controller> cgroup <root>/<controller>)",
            )

    def _dir(self, controller: str) -> Path:
        hierarchy = self.hierarchies.get(controller)
        if hierarchy is None:
            raise OperationFailed(
                f"the cgroup v1 '{controller}' hierarchy is not mounted under {self.root}",
                hint=f"mount it (mount -t cgroup -o {controller} cgroup {self.root}/{controller})",
            )
        return hierarchy / self.parent / self.vm_id

    def group_dirs(self) -> list[Path]:
        unique = dict.fromkeys(self.hierarchies.values())  # co-mounted controllers share one
        return [h / self.parent / self.vm_id for h in unique]

    def create(self) -> V1Cgroup:
        for hierarchy in dict.fromkeys(self.hierarchies.values()):
            parent = hierarchy / self.parent
            _mkdir_group(parent)
            if self.hierarchies.get("cpuset") == hierarchy:
                # A new v1 cpuset group starts with no CPUs and no memory nodes, and a process
                # cannot join it (ENOSPC) until both are set: copy them down from above.
                self._inherit_cpuset(hierarchy, parent)
            group = parent / self.vm_id
            _mkdir_group(group)
            if self.hierarchies.get("cpuset") == hierarchy:
                self._inherit_cpuset(parent, group)
        return self

    @staticmethod
    def _inherit_cpuset(above: Path, below: Path) -> None:
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not _read(below / name, f"read {name}"):
                _write(below / name, _read(above / name, f"read {name}"), f"set {name} of {below}")

    def set_cpu_weight(self, weight: int) -> None:
        _check_weight(weight)
        shares = max(V1_SHARES_MIN, V1_SHARES_AT_DEFAULT * weight // CPU_WEIGHT_DEFAULT)
        _write(self._dir("cpu") / "cpu.shares", str(shares), f"set the CPU weight of VM {self.vm_id}")

    def set_cpu_cap(self, pct: int | None) -> None:
        directory = self._dir("cpu")
        what = f"set the CPU cap of VM {self.vm_id}"
        if pct is None:
            _write(directory / "cpu.cfs_quota_us", "-1", what)
            return
        quota = _quota_us(pct)
        _write(directory / "cpu.cfs_period_us", str(CFS_PERIOD_US), what)
        _write(directory / "cpu.cfs_quota_us", str(quota), what, hints={
            errno.EINVAL: f"a v1 child's quota cannot exceed its parent's; check "
            f"{directory.parent / 'cpu.cfs_quota_us'}",
        })

    def set_cpus(self, cpus: Iterable[int] | None) -> None:
        directory = self._dir("cpuset")
        host = _read(directory.parent / "cpuset.cpus", "read cpuset.cpus")
        value = host if cpus is None else _cpu_list(cpus)  # v1 has no "inherit": copy the parent's
        _write(directory / "cpuset.cpus", value, f"pin VM {self.vm_id} to CPUs {value}",
               hints=dict.fromkeys((errno.EINVAL, errno.ERANGE), f"the host has only the CPUs {host}"))

    def set_memory_limit(self, limit_bytes: int | None) -> None:
        value = "-1" if limit_bytes is None else str(_check_bytes(limit_bytes))
        _write(self._dir("memory") / "memory.limit_in_bytes", value,
               f"set the memory limit of VM {self.vm_id}",
               hints={errno.EBUSY: "the VM already uses more than that; shrink it first (balloon)"})

    def usage(self) -> CgroupUsage:
        cpu = _read(self._dir("cpuacct") / "cpuacct.usage", "read the CPU time of a VM")
        memory = _read(self._dir("memory") / "memory.usage_in_bytes", "read the memory of a VM")
        return CgroupUsage(cpu_time_ns=int(cpu), memory_bytes=int(memory))


class V2Cgroup(VMCgroup):
    """cgroup v2: one directory in the unified hierarchy."""

    version: ClassVar[CgroupVersion] = "v2"

    @property
    def path(self) -> Path:
        return self.root / self.parent / self.vm_id

    def group_dirs(self) -> list[Path]:
        return [self.path]

    def create(self) -> V2Cgroup:
        available = set(_read(self.root / "cgroup.controllers", "list cgroup controllers").split())
        missing = [c for c in V2_REQUIRED if c not in available]
        if missing:
            raise OperationFailed(
                f"the cgroup v2 controllers {', '.join(missing)} are not available in "
                f"{self.root / 'cgroup.controllers'}",
                hint="another cgroup v1 hierarchy may hold them; unmount it or boot with "
                "systemd.unified_cgroup_hierarchy=1",
            )
        wanted = [c for c in (*V2_REQUIRED, *V2_OPTIONAL) if c in available]
        # Controllers flow down: enabled in the root's subtree_control, then in virtpool's.
        _enable(self.root, wanted)
        _mkdir_group(self.root / self.parent)
        _enable(self.root / self.parent, wanted)
        _mkdir_group(self.path)
        return self

    def set_cpu_weight(self, weight: int) -> None:
        _check_weight(weight)  # virtpool's scale is cpu.weight's
        _write(self.path / "cpu.weight", str(weight), f"set the CPU weight of VM {self.vm_id}")

    def set_cpu_cap(self, pct: int | None) -> None:
        value = "max" if pct is None else str(_quota_us(pct))
        _write(self.path / "cpu.max", f"{value} {CFS_PERIOD_US}", f"set the CPU cap of VM {self.vm_id}")

    def set_cpus(self, cpus: Iterable[int] | None) -> None:
        value = "" if cpus is None else _cpu_list(cpus)  # empty: every CPU of the parent
        host = _read(self.root / "cpuset.cpus.effective", "read cpuset.cpus.effective")
        _write(self.path / "cpuset.cpus", value, f"pin VM {self.vm_id} to CPUs {value or 'all'}",
               hints=dict.fromkeys((errno.EINVAL, errno.ERANGE), f"the host has only the CPUs {host}"))

    def set_memory_limit(self, limit_bytes: int | None) -> None:
        value = "max" if limit_bytes is None else str(_check_bytes(limit_bytes))
        _write(self.path / "memory.max", value, f"set the memory limit of VM {self.vm_id}")

    def usage(self) -> CgroupUsage:
        stat = _read(self.path / "cpu.stat", "read the CPU time of a VM")
        fields = dict(line.split(maxsplit=1) for line in stat.splitlines() if " " in line)
        usec = int(fields["usage_usec"]) if "usage_usec" in fields else None
        if usec is None:
            raise OperationFailed(f"{self.path / 'cpu.stat'} has no usage_usec line")
        memory = _read(self.path / "memory.current", "read the memory of a VM")
        return CgroupUsage(cpu_time_ns=usec * 1000, memory_bytes=int(memory))


def _enable(directory: Path, controllers: list[str]) -> None:
    subtree = directory / "cgroup.subtree_control"
    enabled = set(_read(subtree, "list enabled cgroup controllers").split())
    for controller in controllers:
        if controller not in enabled:
            _write(subtree, f"+{controller}", f"enable the {controller} controller below {directory}", hints={
                errno.EBUSY: f"{directory} holds processes of its own; cgroup v2 allows "
                "controllers only in groups without them",
                errno.EINVAL: "the cpu controller cannot be enabled while realtime tasks "
                "run outside the root group",
            })


def _check_weight(weight: int) -> None:
    if not CPU_WEIGHT_MIN <= weight <= CPU_WEIGHT_MAX:
        raise ValueError(f"CPU weight {weight} is outside {CPU_WEIGHT_MIN}..{CPU_WEIGHT_MAX}")


def _quota_us(pct: int) -> int:
    if pct <= 0:
        raise ValueError(f"a CPU cap must be a positive percentage (got {pct}); use None for no cap")
    return CFS_PERIOD_US * pct // 100  # 1 % = 1 ms per 100 ms, the kernel's smallest quota


def _check_bytes(limit: int) -> int:
    if limit <= 0:
        raise ValueError(f"a memory limit must be positive (got {limit}); use None for no limit")
    return limit


# -- entry points -----------------------------------------------------------------------------

_BACKENDS: dict[CgroupVersion, type[VMCgroup]] = {"v1": V1Cgroup, "v2": V2Cgroup}


def vm_cgroup(
    vm_id: str, *, root: Path = CGROUP_ROOT, parent: str = PARENT, version: CgroupVersion | None = None
) -> VMCgroup:
    """The handle of a VM's group (nothing is created); the cgroup version is detected."""
    version = version or detect_version(root)
    if version is None:
        raise OperationFailed(
            f"no cgroup hierarchy is mounted at {root}",
            hint="mount cgroup2 there (or the v1 cpu, cpuacct and memory hierarchies)",
        )
    return _BACKENDS[version](vm_id, root=root, parent=parent)


def create(
    vm_id: str, *, root: Path = CGROUP_ROOT, parent: str = PARENT, version: CgroupVersion | None = None
) -> VMCgroup:
    """Make (idempotently) and return the group of ``vm_id``."""
    return vm_cgroup(vm_id, root=root, parent=parent, version=version).create()


def group_names(*, root: Path = CGROUP_ROOT, parent: str = PARENT) -> set[str]:
    """The VM ids that have a group under ``parent`` (in any hierarchy)."""
    version = detect_version(root)
    if version is None:
        return set()
    if version == "v2":
        parents = [root / parent]
    else:
        parents = [h / parent for h in dict.fromkeys(_v1_hierarchies(root).values())]
    names: set[str] = set()
    for directory in parents:
        if directory.is_dir():
            names.update(p.name for p in directory.iterdir() if p.is_dir())
    return names


# A group this young may be another agent's start in progress on this machine (made, its QEMU
# not yet in it): several agents share the hierarchy (e.g. the cluster tests' three).
ORPHAN_MIN_AGE_S = 60.0


def _young(group: VMCgroup, min_age_s: float) -> bool:
    now = time.time()
    for directory in group.group_dirs():
        try:
            if now - directory.stat().st_mtime < min_age_s:
                return True
        except OSError:
            continue
    return False


def cleanup_orphans(
    known_vm_ids: Iterable[str], *, root: Path = CGROUP_ROOT, parent: str = PARENT,
    min_age_s: float = ORPHAN_MIN_AGE_S,
) -> list[str]:
    """Remove the groups under ``parent`` that no VM claims and that hold no process.

    Returns the VM ids whose groups were removed. A group with processes in it is left alone
    (its QEMU may be one the control plane forgot; killing it is not this module's call).
    Only safe where one agent owns ``parent``.
    """
    known = set(known_vm_ids)
    removed = []
    for name in sorted(group_names(root=root, parent=parent) - known):
        group = vm_cgroup(name, root=root, parent=parent)
        if group.pids() or _young(group, min_age_s):
            continue
        try:
            group.remove(timeout=0)
        except OperationFailed:
            continue  # a process joined meanwhile
        removed.append(name)
    return removed
