"""What a resize means for one VM: the new record, what changes live, what waits for a boot.

Pure: the control plane writes the new record, then asks the agent to apply the live part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from virtpool.model.errors import Conflict, InsufficientResources, InvalidRequest
from virtpool.model.spec import HostInfo, LiveChanges, Resize
from virtpool.model.vm import VMInfo


@dataclass
class ResizePlan:
    columns: dict[str, Any] = field(default_factory=dict)  # new values for the VM's record
    live: LiveChanges | None = None  # None when the VM does not run
    notes: list[str] = field(default_factory=list)


def plan_resize(vm: VMInfo, request: Resize, host: HostInfo, *, running: bool) -> ResizePlan:
    """Check ``request`` against the VM and its host; raise with a hint when it cannot be done."""
    if request.is_empty():
        raise InvalidRequest("nothing to resize", hint="give at least one of --memory, --cpus, "
                             "--cpu-cap, --cpu-weight, --cpu-affinity, --disk-iops, --disk-bps, "
                             "--disk-size")
    plan = ResizePlan()
    live = LiveChanges()
    asked = request.model_fields_set

    max_memory = vm.max_memory_mib
    if "max_memory_mib" in asked and request.max_memory_mib != vm.max_memory_mib:
        if running:
            raise Conflict(
                f"VM '{vm.name}' runs with a {vm.max_memory_mib} MiB ceiling; it changes only at boot",
                hint="stop the VM, set --max-memory, start it again",
            )
        max_memory = _need(request.max_memory_mib)
        _fits_host_memory(vm.name, max_memory, host)
        plan.columns["max_memory_mib"] = max_memory

    # Lowering the ceiling below the current memory takes the memory down with it.
    memory = request.memory_mib if "memory_mib" in asked else min(vm.memory_mib, max_memory)
    if memory is None:
        raise InvalidRequest("memory cannot be unset")
    if memory > max_memory:
        raise InvalidRequest(
            f"VM '{vm.name}' can have at most {max_memory} MiB (its --max-memory)",
            hint="ask for less, or stop it and raise --max-memory",
        )
    if "memory_mib" in asked:
        plan.columns["memory_mib"] = memory
        live.balloon_mib = memory
    elif memory != vm.memory_mib:
        plan.columns["memory_mib"] = memory

    if "cpus" in asked:
        cpus = _need(request.cpus)
        if cpus > host.cpus:
            raise InsufficientResources(f"this host has {host.cpus} CPUs; {cpus} vCPUs cannot run here",
                                        hint=f"ask for --cpus {host.cpus} or fewer")
        plan.columns["cpus"] = cpus
        if running and cpus != vm.cpus:
            plan.notes.append(f"--cpus {cpus} takes effect at the next boot (`virtpool vm restart {vm.name}`)")

    if "cpu_cap_pct" in asked:
        cap = request.cpu_cap_pct or None
        if cap is not None and cap > 100 * host.cpus:
            raise InsufficientResources(f"a {cap}% cap is more than this host's {host.cpus} CPUs give",
                                        hint=f"cap at {100 * host.cpus}% or less, or 0 for no cap")
        plan.columns["cpu_cap_pct"] = cap
        live.cpu_cap_pct = cap or 0

    if "cpu_weight" in asked:
        plan.columns["cpu_weight"] = _need(request.cpu_weight)
        live.cpu_weight = request.cpu_weight

    if {"disk_iops", "disk_bps"} & asked:
        iops = request.disk_iops if "disk_iops" in asked else vm.disk_iops
        bps = request.disk_bps if "disk_bps" in asked else vm.disk_bps
        plan.columns["disk_iops"], plan.columns["disk_bps"] = iops or None, bps or None
        live.throttle = (iops or 0, bps or 0)

    if "cpu_affinity" in asked:
        cpus = sorted(set(request.cpu_affinity or []))
        if any(c >= host.cpus for c in cpus):
            raise InvalidRequest(f"this host's CPUs are 0-{host.cpus - 1}", hint="pick CPUs that exist")
        plan.columns["cpu_affinity"] = cpus or None
        live.cpu_affinity = cpus

    if "disk_mib" in asked and request.disk_mib != vm.disk_mib:
        disk = _need(request.disk_mib)
        if disk < vm.disk_mib:
            raise InvalidRequest(
                f"VM '{vm.name}' has a {vm.disk_mib} MiB disk; disks only grow",
                hint="shrinking would cut off the guest's data",
            )
        if disk - vm.disk_mib > host.disk_free_mib:
            raise InsufficientResources(
                f"growing the disk by {disk - vm.disk_mib} MiB needs more than the host's "
                f"{host.disk_free_mib} MiB free", hint="ask for less or free space on the host")
        plan.columns["disk_mib"] = disk
        live.disk_mib = disk

    if running:
        plan.live = live
    return plan


def _fits_host_memory(name: str, memory_mib: int, host: HostInfo) -> None:
    if memory_mib > host.memory_mib:
        raise InsufficientResources(
            f"VM '{name}' cannot have {memory_mib} MiB; this host has {host.memory_mib} MiB",
            hint="ask for less memory",
        )


def _need(value: int | None) -> int:
    if value is None:
        raise InvalidRequest("a value is required")
    return value
