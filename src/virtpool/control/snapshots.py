"""Snapshots of a VM's disk (and memory), as the control plane allows them.

The rules live here; the agent does what it is told. A snapshot name is unique per VM; a
memory snapshot needs a running guest; a restore needs the VM stopped, except a memory
snapshot, which is restored into the running VM (its guest continues from the snapshot).
Refusals change nothing and say what to do.
"""

from __future__ import annotations

from virtpool.control.events import EventLog
from virtpool.control.vms import VMService
from virtpool.model.errors import Conflict, NotFound
from virtpool.model.snapshot import SnapshotInfo
from virtpool.model.states import VMState

S = VMState
# Paused VMs are left out: a snapshot of one would freeze a guest that cannot answer.
SNAPSHOT_STATES = {S.RUNNING, S.STOPPED}


class SnapshotService:
    """Create, list, restore and delete a VM's snapshots."""

    def __init__(self, vms: VMService, events: EventLog | None = None) -> None:
        self._vms = vms
        self._events = events

    def list(self, ref: str, project_id: str | None = None) -> list[SnapshotInfo]:
        vm = self._vms.get(ref, project_id)
        return self._vms.agent_of(vm).list_snapshots(vm.id)

    def create(self, ref: str, name: str, *, memory: bool = False,
               project_id: str | None = None) -> SnapshotInfo:
        vm = self._vms.get(ref, project_id)
        if vm.state not in SNAPSHOT_STATES:
            raise Conflict(f"VM '{vm.name}' is {vm.state.value}; snapshots are taken of running "
                           "or stopped VMs", hint="wait until it is running or stopped")
        if memory and vm.state != S.RUNNING:
            raise Conflict(f"VM '{vm.name}' is {vm.state.value}: a memory snapshot needs a running "
                           "guest", hint="start it, or take a disk snapshot (without --memory)")
        agent = self._vms.agent_of(vm)
        if any(s.name == name for s in agent.list_snapshots(vm.id)):
            raise Conflict(f"VM '{vm.name}' already has a snapshot named '{name}'",
                           hint="pick another name, or delete the old one first")
        taken = agent.create_snapshot(vm.id, name, memory=memory)
        self._record(vm.name, vm.project, f"snapshot '{name}' of VM '{vm.name}' taken"
                     + (" with its memory" if memory else ""))
        return taken

    def restore(self, ref: str, name: str, project_id: str | None = None) -> SnapshotInfo:
        vm = self._vms.get(ref, project_id)
        agent = self._vms.agent_of(vm)
        snapshot = self._find(agent.list_snapshots(vm.id), vm.name, name)
        if vm.state == S.RUNNING and not snapshot.memory:
            raise Conflict(f"VM '{vm.name}' is running; snapshot '{name}' has no memory, so "
                           "restoring it under a running guest would corrupt its filesystems",
                           hint=f"stop the VM first (virtpool vm stop {vm.name}), then restore")
        if vm.state not in SNAPSHOT_STATES:
            raise Conflict(f"VM '{vm.name}' is {vm.state.value}; restore needs it stopped "
                           "(or running, for a memory snapshot)", hint="wait until it settles")
        agent.restore_snapshot(vm.id, name)
        self._record(vm.name, vm.project, f"VM '{vm.name}' restored to snapshot '{name}'")
        return snapshot

    def delete(self, ref: str, name: str, project_id: str | None = None) -> None:
        vm = self._vms.get(ref, project_id)
        if vm.state not in SNAPSHOT_STATES:
            raise Conflict(f"VM '{vm.name}' is {vm.state.value}", hint="wait until it is running or stopped")
        agent = self._vms.agent_of(vm)
        self._find(agent.list_snapshots(vm.id), vm.name, name)
        agent.delete_snapshot(vm.id, name)
        self._record(vm.name, vm.project, f"snapshot '{name}' of VM '{vm.name}' deleted")

    @staticmethod
    def _find(snapshots: list[SnapshotInfo], vm: str, name: str) -> SnapshotInfo:
        for snapshot in snapshots:
            if snapshot.name == name:
                return snapshot
        raise NotFound(f"VM '{vm}' has no snapshot named '{name}'",
                       hint=f"see `virtpool vm snapshot list {vm}`")

    def _record(self, vm: str, project_id: str, message: str) -> None:
        if self._events is not None:
            self._events.record("vm.snapshot", message, vm=vm, project_id=project_id)
