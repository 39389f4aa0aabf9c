"""Clones: a new VM whose disk is a full copy of another's, or of one of its snapshots.

The clone is a VM of its own: a new id, its own name (its guest's hostname), its own uid,
cgroup and network identity (a new MAC; through cloud-init a new instance-id and machine-id);
host port forwards are not copied (they would collide). The source must be stopped unless a
snapshot is named (a snapshot does not change under a running guest). A clone that fails
leaves no VM and no disk behind.
"""

from __future__ import annotations

from virtpool.control.events import EventLog
from virtpool.control.vms import VMService
from virtpool.model.errors import Conflict, NotFound
from virtpool.model.spec import VMSpec
from virtpool.model.states import VMState
from virtpool.model.vm import VMInfo


class CloneService:
    def __init__(self, vms: VMService, events: EventLog | None = None) -> None:
        self._vms = vms
        self._events = events

    def clone(self, ref: str, name: str, *, snapshot: str | None = None, project_id: str) -> VMInfo:
        source = self._vms.get(ref, project_id)
        agent = self._vms.agent_of(source)
        if snapshot is None and source.state != VMState.STOPPED:
            raise Conflict(f"VM '{source.name}' is {source.state.value}; a clone copies a stopped disk",
                           hint=f"stop it first, or clone one of its snapshots (--snapshot)")
        if snapshot is not None and not any(s.name == snapshot for s in agent.list_snapshots(source.id)):
            raise NotFound(f"VM '{source.name}' has no snapshot named '{snapshot}'",
                           hint=f"see `virtpool vm snapshot list {source.name}`")
        spec = VMSpec(name=name, image=source.image, cpus=source.cpus, memory_mib=source.memory_mib,
                      disk_mib=source.disk_mib, kernel_args=source.kernel_args, accel=source.accel,  # type: ignore[arg-type]
                      max_memory_mib=source.max_memory_mib, cpu_cap_pct=source.cpu_cap_pct,
                      cpu_weight=source.cpu_weight, disk_iops=source.disk_iops, disk_bps=source.disk_bps,
                      cpu_affinity=source.cpu_affinity, boot_timeout_s=source.boot_timeout_s,
                      # The same configuration, but a host name of its own; its instance-id
                      # (its new id) makes cloud-init treat the copied disk as a new instance.
                      cloud_init=source.cloud_init.for_clone() if source.cloud_init else None)
        vm = self._vms.create(spec, project_id=project_id)
        try:
            agent.clone_disk(source.id, vm.id, image=source.image, snapshot=snapshot)
        except BaseException:
            self._vms.delete(vm.id, force=True)
            raise
        if self._events is not None:
            what = f"snapshot '{snapshot}' of VM '{source.name}'" if snapshot else f"VM '{source.name}'"
            self._events.record("vm.clone", f"VM '{name}' cloned from {what}", vm=name, project_id=project_id)
        return self._vms.get(vm.id)
