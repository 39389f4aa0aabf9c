"""Backups of running VMs into a host directory, and restores of a chain as a new VM.

The agent checks the directory (empty for a full backup, this VM's chain for an incremental,
writable) and leaves it as it was when anything fails; the control plane adds the VM's state
and, for a restore, makes the new VM's record and disk first and removes both if the restore
fails.
"""

from __future__ import annotations

from virtpool.control.events import EventLog
from virtpool.control.vms import VMService
from virtpool.model.backup import BackupInfo
from virtpool.control.detached import NoAgentAttached
from virtpool.model.errors import Conflict, InvalidRequest, NotFound
from virtpool.model.spec import VMSpec
from virtpool.model.states import VMState
from virtpool.model.vm import VMInfo

MIB = 1 << 20


class BackupService:
    def __init__(self, vms: VMService, events: EventLog | None = None) -> None:
        self._vms = vms
        self._events = events

    def backup(self, ref: str, target: str, *, incremental: bool, project_id: str | None = None) -> BackupInfo:
        vm = self._vms.get(ref, project_id)
        if vm.state not in (VMState.RUNNING, VMState.PAUSED):
            raise Conflict(f"VM '{vm.name}' is {vm.state.value}; backups are taken of running VMs "
                           "(their changes are tracked while they run)",
                           hint=f"start it: virtpool vm start {vm.name}")
        chain = self._vms.agent_of(vm).backup_vm(vm.id, target, incremental=incremental,
                                                 vm=vm.name, image=vm.image)
        newest = chain.files[-1]
        self._record(vm.name, vm.project, f"VM '{vm.name}' backed up ({newest.kind}, "
                     f"{newest.bytes / MIB:.1f} MiB) into {target}")
        return chain

    def read(self, source: str, *, host: str | None = None) -> BackupInfo:
        """The chain in ``source`` on ``host`` (default: the control plane's own host)."""
        try:
            agent = self._vms.agent_on(host or self._vms.local_host)
        except (NoAgentAttached, NotFound) as err:
            if host is not None:
                raise
            raise InvalidRequest(f"{source} is a directory on a host, and this control plane has no "
                                 "host of its own", hint="name the host whose directory it is: --host NAME") from err
        return agent.read_backup(source)

    def restore(self, source: str, name: str, *, host: str | None = None, project_id: str) -> VMInfo:
        """A new stopped VM from the chain in ``source`` on ``host``, made on that host."""
        chain = self.read(source, host=host)
        disk_mib = -(-chain.disk_bytes // MIB)
        # Made on the chain's host (pinned there): the chain can only be read where it is.
        vm = self._vms.create(VMSpec(name=name, image=chain.image, disk_mib=disk_mib, host=host),
                              project_id=project_id)
        try:
            self._vms.agent_of(vm).restore_backup(vm.id, source)
        except BaseException:
            self._vms.delete(vm.id, force=True)
            raise
        self._record(vm.name, vm.project, f"VM '{name}' restored from the backup of '{chain.vm}' in {source}")
        return self._vms.get(vm.id)

    def _record(self, vm: str, project_id: str, message: str) -> None:
        if self._events is not None:
            self._events.record("vm.backup", message, vm=vm, project_id=project_id)
