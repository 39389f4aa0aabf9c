"""What a host offers, what a VM claims, and what a placement asks for.

Pure data and the rules that hold without looking at anything else: sizes are whole and
non-negative, a reservation fits in its host, allocation ratios are sane (memory above 1.0 only
with ballooning). No NumPy here and no I/O: the scheduler turns these into arrays, the store
turns rows into these.

Units: CPUs are counted in logical CPUs (a VM's vCPUs), memory and disk in MiB, as everywhere
else in virtpool (see ``virtpool.model.units``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from virtpool.model.errors import InvalidRequest

# What an operator sets: up takes new VMs; draining, maintenance and down take none.
AdminHostState = Literal["up", "draining", "maintenance", "down"]
ADMIN_HOST_STATES: tuple[AdminHostState, ...] = get_args(AdminHostState)
# ...and what the lease monitor sets when a host's lease lapses (control/leases.py): it takes
# no new VMs until its agent is back, when the state an operator gave it returns.
HostState = Literal["up", "draining", "maintenance", "down", "unreachable"]
HOST_STATES: tuple[HostState, ...] = get_args(HostState)

# The accelerator a host offers. A KVM host can also run TCG guests; a TCG-only host cannot run
# a guest that insists on KVM (see DESIGN.md, "The data plane").
HostAccel = Literal["kvm", "tcg"]
HOST_ACCELS: tuple[HostAccel, ...] = get_args(HostAccel)

GroupPolicy = Literal["affinity", "anti-affinity"]
GROUP_POLICIES: tuple[GroupPolicy, ...] = get_args(GroupPolicy)

# How the surviving hosts are ranked (DESIGN.md, "Scheduling"); the scheduler maps each name to
# a function and checks at import time that it knows all of these.
WeigherName = Literal["spread", "pack", "balanced"]
WEIGHER_NAMES: tuple[WeigherName, ...] = get_args(WeigherName)

RESOURCE_NAMES: tuple[str, ...] = ("cpu", "memory", "disk")

# Defaults from DESIGN.md, "Resources": CPU time is shared well by the kernel's scheduler, so
# 4 vCPUs per logical CPU is safe for general workloads; memory and disk are not overcommitted
# unless the operator says so.
DEFAULT_CPU_RATIO = 4.0
DEFAULT_MEMORY_RATIO = 1.0
DEFAULT_DISK_RATIO = 1.0
# Above this a ratio stops meaning anything (OpenStack's historical cpu_allocation_ratio default
# is 16.0; we allow four times that for test rigs and idle VDI pools, and refuse typos beyond).
MAX_RATIO = 64.0
# Memory beyond 1.0 is only safe when the balloon can take memory back from guests.
MAX_MEMORY_RATIO_WITHOUT_BALLOON = 1.0

# Floating-point products such as 100 × 0.29 come out as 28.999999999999996; this slack makes
# them count as the whole number they are meant to be before rounding down.
_ROUNDING_SLACK = 1e-9


def capacity_under_ratio(total: int, reserved: int, ratio: float) -> int:
    """Whole units a host can promise of one resource: ``floor((total - reserved) * ratio)``.

    Rounded down because a claim is in whole vCPUs and whole MiB, and a host must never promise
    a fraction it does not have.
    """
    return math.floor((total - reserved) * ratio + _ROUNDING_SLACK)


@dataclass(frozen=True, slots=True)
class Ratios:
    """Allocation ratios of one host: how much may be promised per unit actually present."""

    cpu: float = DEFAULT_CPU_RATIO
    memory: float = DEFAULT_MEMORY_RATIO
    disk: float = DEFAULT_DISK_RATIO

    def __post_init__(self) -> None:
        for resource in RESOURCE_NAMES:
            value = getattr(self, resource)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRequest(f"{resource} ratio must be a number, got {value!r}")
            if not math.isfinite(value) or not 0 < value <= MAX_RATIO:
                raise InvalidRequest(
                    f"{resource} ratio {value} is out of range",
                    hint=f"use a ratio above 0 and at most {MAX_RATIO:g}",
                )


def check_ratios(ratios: Ratios, *, balloon: bool, host: str = "") -> None:
    """Refuse a memory ratio above 1.0 on a host without ballooning.

    Without a balloon the guest keeps every page it ever touched, so overcommitted memory ends
    in the host's OOM killer rather than in a slower guest.
    """
    if ratios.memory > MAX_MEMORY_RATIO_WITHOUT_BALLOON and not balloon:
        where = f" on host '{host}'" if host else ""
        raise InvalidRequest(
            f"memory ratio {ratios.memory:g}{where} needs ballooning, which is off",
            hint="enable ballooning on the host, or keep the memory ratio at 1.0 or below",
        )


def _check_size(owner: str, what: str, value: object, *, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{owner}: {what} must be a whole number, got {value!r}")
    if value < minimum:
        raise InvalidRequest(f"{owner}: {what} must be at least {minimum}, got {value}")


def _check_labels(owner: str, labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidRequest(
                f"{owner}: label {key!r}={value!r} is not a pair of strings",
                hint="write labels as key=value, e.g. zone=a",
            )


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of each resource: vCPUs, MiB of memory, MiB of disk."""

    cpus: int
    memory_mib: int
    disk_mib: int

    def as_tuple(self) -> tuple[int, int, int]:
        """In the scheduler's resource order (``RESOURCE_NAMES``)."""
        return (self.cpus, self.memory_mib, self.disk_mib)


@dataclass(frozen=True, slots=True)
class HostCapacity:
    """One host as the scheduler sees it: what it has, what it keeps, what it may promise.

    ``allowed_projects`` is None for a host open to every project, else the only projects whose
    VMs may run there.
    """

    name: str
    cpus: int
    memory_mib: int
    disk_mib: int
    reserved_cpus: int = 0
    reserved_memory_mib: int = 0
    reserved_disk_mib: int = 0
    ratios: Ratios = field(default_factory=Ratios)
    balloon: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    state: HostState = "up"
    accel: HostAccel = "kvm"
    allowed_projects: frozenset[str] | None = None

    def __post_init__(self) -> None:
        owner = f"host '{self.name}'"
        if not isinstance(self.name, str) or not self.name:
            raise InvalidRequest("a host needs a name")
        for what, total, reserved in (
            ("cpus", self.cpus, self.reserved_cpus),
            ("memory_mib", self.memory_mib, self.reserved_memory_mib),
            ("disk_mib", self.disk_mib, self.reserved_disk_mib),
        ):
            _check_size(owner, what, total)
            _check_size(owner, f"reserved {what}", reserved)
            if reserved > total:
                raise InvalidRequest(
                    f"{owner}: reserves {reserved} of {what} but has only {total}",
                    hint="lower the reservation",
                )
        if self.state not in HOST_STATES:
            raise InvalidRequest(f"{owner}: unknown state {self.state!r}",
                                 hint=f"one of: {', '.join(HOST_STATES)}")
        if self.accel not in HOST_ACCELS:
            raise InvalidRequest(f"{owner}: unknown accelerator {self.accel!r}",
                                 hint=f"one of: {', '.join(HOST_ACCELS)}")
        _check_labels(owner, self.labels)
        if self.allowed_projects is not None and not isinstance(self.allowed_projects, frozenset):
            raise InvalidRequest(f"{owner}: allowed_projects must be a frozenset or None")
        check_ratios(self.ratios, balloon=self.balloon, host=self.name)

    def capacity(self) -> Resources:
        """What the host may promise: ``(total - reserved) × ratio`` per resource, rounded down.

        E.g. 4 CPUs with nothing reserved and the default CPU ratio 4.0 → 16 vCPUs.
        """
        return Resources(
            capacity_under_ratio(self.cpus, self.reserved_cpus, self.ratios.cpu),
            capacity_under_ratio(self.memory_mib, self.reserved_memory_mib, self.ratios.memory),
            capacity_under_ratio(self.disk_mib, self.reserved_disk_mib, self.ratios.disk),
        )

    def usable(self) -> Resources:
        """What is physically there for guests: total minus the reservation, no ratio."""
        return Resources(
            self.cpus - self.reserved_cpus,
            self.memory_mib - self.reserved_memory_mib,
            self.disk_mib - self.reserved_disk_mib,
        )


@dataclass(frozen=True, slots=True)
class Group:
    """A placement group: its members run together (affinity) or apart (anti-affinity).

    ``hard`` rules are filters (a placement that would break one is refused); soft ones are
    preferences the weighers honour when they can.
    """

    name: str
    policy: GroupPolicy
    hard: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidRequest("a group needs a name")
        if self.policy not in GROUP_POLICIES:
            raise InvalidRequest(f"group '{self.name}': unknown policy {self.policy!r}",
                                 hint=f"one of: {', '.join(GROUP_POLICIES)}")


@dataclass(frozen=True, slots=True)
class Claim:
    """The resources one VM holds on one host. The host's usage is the sum of its claims."""

    vm: str
    host: str
    cpus: int
    memory_mib: int
    disk_mib: int
    project: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        owner = f"claim of VM '{self.vm}'"
        if not self.vm or not self.host:
            raise InvalidRequest("a claim needs a VM and a host")
        _check_size(owner, "cpus", self.cpus)
        _check_size(owner, "memory_mib", self.memory_mib)
        _check_size(owner, "disk_mib", self.disk_mib)

    def resources(self) -> Resources:
        return Resources(self.cpus, self.memory_mib, self.disk_mib)


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """Where may this VM run? Everything the scheduler needs to answer, and nothing else.

    ``accel`` None means any host; "kvm" needs a KVM host; "tcg" runs anywhere (KVM hosts run
    TCG too). ``weigher`` overrides the pool's default ranking for this request only.
    """

    vm: str
    cpus: int
    memory_mib: int
    disk_mib: int = 0
    project: str | None = None
    required_labels: Mapping[str, str] = field(default_factory=dict)
    group: Group | None = None
    accel: HostAccel | None = None
    weigher: WeigherName | None = None
    host_cpus: int = 0  # the fewest host CPUs the VM's affinity and CPU cap need
    host: str | None = None  # pinned: this host or none (`vm create --host`)
    # A resize of a VM on its host: cpus, memory and disk are what it grows by (0: that one
    # does not grow), host_cpus the host CPUs its new shape needs.
    growth: bool = False

    def __post_init__(self) -> None:
        owner = f"VM '{self.vm}'"
        if not isinstance(self.vm, str) or not self.vm:
            raise InvalidRequest("a placement request needs a VM name")
        _check_size(owner, "cpus", self.cpus, minimum=0 if self.growth else 1)
        _check_size(owner, "memory_mib", self.memory_mib, minimum=0 if self.growth else 1)
        _check_size(owner, "disk_mib", self.disk_mib)
        _check_labels(owner, self.required_labels)
        if self.accel is not None and self.accel not in HOST_ACCELS:
            raise InvalidRequest(f"{owner}: unknown accelerator {self.accel!r}",
                                 hint=f"one of: {', '.join(HOST_ACCELS)}, or none")
        if self.weigher is not None and self.weigher not in WEIGHER_NAMES:
            raise InvalidRequest(f"{owner}: unknown weigher {self.weigher!r}",
                                 hint=f"one of: {', '.join(WEIGHER_NAMES)}")
        if self.group is not None and not isinstance(self.group, Group):
            raise InvalidRequest(f"{owner}: group must be a Group, got {self.group!r}")

    def resources(self) -> Resources:
        return Resources(self.cpus, self.memory_mib, self.disk_mib)

    def claim_on(self, host: str) -> Claim:
        """The claim this request makes once placed on ``host``."""
        return Claim(
            vm=self.vm, host=host, cpus=self.cpus, memory_mib=self.memory_mib,
            disk_mib=self.disk_mib, project=self.project,
            group=self.group.name if self.group else None,
        )


@dataclass(frozen=True, slots=True)
class MeasuredLoad:
    """What a running VM actually uses, as its host's agent reports it.

    ``cpus`` is host CPU time in CPUs (1.5 = one and a half logical CPUs busy); ``memory_mib``
    is the host memory its QEMU process holds.
    """

    cpus: float
    memory_mib: float

    def __post_init__(self) -> None:
        for what in ("cpus", "memory_mib"):
            value = getattr(self, what)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InvalidRequest(f"measured {what} must be a number ≥ 0, got {value!r}")
