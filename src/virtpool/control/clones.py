"""Clones: a new VM whose disk is made from another's, or from one of its snapshots.

Three kinds (``model.snapshot.CloneKind``): linked by default (a small copy-on-write disk over
a base of the source's data that the host keeps, refcounted, while any clone uses it: the
source and its snapshots can be deleted under their clones); ``full``, an independent flat
copy; and ``memory`` (``vm create --from-snapshot SRC:SNAP``), a copy that keeps a memory
snapshot, which the clone's first start resumes instead of booting.

The clone is a VM of its own: a new id, its own name (its guest's hostname), its own uid,
cgroup and network identity (a new MAC; through cloud-init a new instance-id and machine-id);
host port forwards are not copied (they would collide). The source must be stopped unless a
snapshot is named (a snapshot does not change under a running guest). ``memory`` copies the
whole qcow2 byte for byte (the snapshot's RAM is in it); of a running source, its host pauses
the guest for the copy (QEMU's stop flushes the file's tables and writes nothing until it
goes on), which makes the copy as whole as a stopped disk's. A clone that fails leaves no VM and no disk behind.
"""

from __future__ import annotations

from collections.abc import Callable

from virtpool.control.events import EventLog
from virtpool.control.vms import VMService
from virtpool.model.errors import Conflict, InvalidRequest, NotFound
from virtpool.model.snapshot import CloneKind
from virtpool.model.spec import VMSpec
from virtpool.model.states import VMState
from virtpool.model.vm import VMInfo


class CloneService:
    def __init__(self, vms: VMService, events: EventLog | None = None,
                 warm_copies: Callable[[], int] = lambda: 0) -> None:
        self._vms = vms
        self._events = events
        self._warm_copies = warm_copies  # the pool setting: disks kept ready per memory snapshot

    def clone(self, ref: str, name: str, *, snapshot: str | None = None, full: bool = False,
              memory: bool = False, project_id: str) -> VMInfo:
        source = self._vms.get(ref, project_id)
        agent = self._vms.agent_of(source)
        kind: CloneKind = "memory" if memory else ("full" if full else "linked")
        if memory and snapshot is None:
            raise InvalidRequest("a start from a snapshot needs the snapshot's name",
                                 hint=f"write SOURCE:SNAPSHOT, e.g. {source.name}:warm")
        if snapshot is None and source.state != VMState.STOPPED:
            raise Conflict(f"VM '{source.name}' is {source.state.value}; a clone copies a stopped disk",
                           hint="stop it first, or clone one of its snapshots (--snapshot)")
        if memory and source.state not in (VMState.STOPPED, VMState.RUNNING, VMState.PAUSED):
            raise Conflict(f"VM '{source.name}' is {source.state.value}; a VM is started from its memory "
                           "snapshot while it is stopped or running",
                           hint=f"wait until it is either: virtpool vm show {source.name}")
        taken = next((s for s in agent.list_snapshots(source.id) if s.name == snapshot), None) if snapshot else None
        if snapshot is not None and taken is None:
            raise NotFound(f"VM '{source.name}' has no snapshot named '{snapshot}'",
                           hint=f"see `virtpool vm snapshot list {source.name}`")
        if memory and taken is not None and not taken.memory:
            raise Conflict(f"snapshot '{snapshot}' of VM '{source.name}' has no memory: there is no "
                           "running state to start from",
                           hint=f"take one of the running VM: virtpool vm snapshot create {source.name} "
                                f"{snapshot}-mem --memory (or clone the disk: virtpool vm clone)")
        spec = VMSpec(name=name, image=source.image, cpus=source.cpus, memory_mib=source.memory_mib,
                      disk_mib=source.disk_mib, kernel_args=source.kernel_args, accel=source.accel,  # type: ignore[arg-type]
                      max_memory_mib=source.max_memory_mib, cpu_cap_pct=source.cpu_cap_pct,
                      cpu_weight=source.cpu_weight, disk_iops=source.disk_iops, disk_bps=source.disk_bps,
                      cpu_affinity=source.cpu_affinity, boot_timeout_s=source.boot_timeout_s,
                      # The same configuration, but a host name of its own; its instance-id
                      # (its new id) makes cloud-init treat the copied disk as a new instance.
                      cloud_init=source.cloud_init.for_clone() if source.cloud_init else None,
                      # Made on the source's host, where the disk it copies is.
                      host=source.host)
        vm = self._vms.create(spec, project_id=project_id)
        try:
            agent.clone_disk(source.id, vm.id, image=source.image, snapshot=snapshot, kind=kind,
                             keep_ready=self._warm_copies() if kind == "memory" else 0)
        except BaseException:
            self._vms.delete(vm.id, force=True)
            raise
        if self._events is not None:
            what = f"snapshot '{snapshot}' of VM '{source.name}'" if snapshot else f"VM '{source.name}'"
            how = {"linked": "linked clone", "full": "full copy", "memory": "started from the memory"}[kind]
            self._events.record("vm.clone", f"VM '{name}' cloned from {what} ({how})", vm=name,
                                project_id=project_id)
        return self._vms.get(vm.id)
