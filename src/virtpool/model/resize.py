"""What a resize means for one VM: the new record, what changes live, what waits for a boot.

Pure: the control plane writes the new record, then asks the agent to apply the live part.
Whether the VM's host can take its new shape is not checked here: that is the scheduler's
filters plus the claim on the host row, as for a new VM (``Placer.adjust``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from virtpool.model.errors import Conflict, InvalidRequest
from virtpool.model.spec import LiveChanges, Resize
from virtpool.model.vm import VMInfo


@dataclass
class ResizePlan:
    columns: dict[str, Any] = field(default_factory=dict)  # new values for the VM's record
    live: LiveChanges | None = None  # None when the VM does not run
    notes: list[str] = field(default_factory=list)


def plan_resize(vm: VMInfo, request: Resize, *, running: bool) -> ResizePlan:
    """Check ``request`` against the VM; raise with a hint when it cannot be done."""
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
        plan.columns["cpus"] = cpus
        if running and cpus != vm.cpus:
            plan.notes.append(f"--cpus {cpus} takes effect at the next boot (`virtpool vm restart {vm.name}`)")

    if "cpu_cap_pct" in asked:
        cap = request.cpu_cap_pct or None
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
        plan.columns["cpu_affinity"] = cpus or None
        live.cpu_affinity = cpus

    if "disk_mib" in asked and request.disk_mib != vm.disk_mib:
        disk = _need(request.disk_mib)
        if disk < vm.disk_mib:
            raise InvalidRequest(
                f"VM '{vm.name}' has a {vm.disk_mib} MiB disk; disks only grow",
                hint="shrinking would cut off the guest's data",
            )
        plan.columns["disk_mib"] = disk
        live.disk_mib = disk

    if running:
        plan.live = live
    return plan


def _need(value: int | None) -> int:
    if value is None:
        raise InvalidRequest("a value is required")
    return value
