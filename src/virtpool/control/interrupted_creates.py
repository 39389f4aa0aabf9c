"""Creates cut off by a crash of the control plane: a VM whose create was asked to boot it, but
which never ran, is removed at the next start rather than left stopped or in error for its user
to find (their create only ever answered with a broken connection).

A VM that did run, or whose QEMU survived and is booting again, is kept, and its operation
goes on following it: it is what the create asked for. A create that had not asked to boot
leaves its stopped VM: that is its result; one whose image was still on its way to the host
(a ``vm.provision`` operation) never made its disk, and is removed as the others are.
"""

from __future__ import annotations

import logging

from virtpool.control.idempotency import IdempotentCreates
from virtpool.control.operations import OperationService
from virtpool.control.vm_operations import VMOperations
from virtpool.control.vms import VMService
from virtpool.model.errors import NotFound
from virtpool.model.operation import Operation
from virtpool.model.states import VMState

log = logging.getLogger(__name__)

# Read back well beyond what one crash can cut off; more are failed as interrupted all the same.
MAX_CUT_OFF = 10_000
NEVER_RAN = (VMState.CREATING, VMState.STOPPED, VMState.ERROR)
REMOVED = ("virtpool stopped before VM '{name}' first ran, so the VM was removed and nothing of "
           "it is left (no disk, no claim on the quota); create it again (a retry with the same "
           "Idempotency-Key does)")
LEFT = ("virtpool stopped before VM '{name}' first ran; the VM was left, as removing it failed "
        "({why}): delete it with `virtpool vm delete {name} --force`")


def cut_off_creates(operations: OperationService) -> list[Operation]:
    """The create-and-boot operations this process's previous run left unfinished (read before
    those are failed as interrupted, and before the VMs are reconciled)."""
    return [*operations.list(status="running", kind="vm.create", owner=operations.owner, limit=MAX_CUT_OFF),
            *operations.list(status="running", kind="vm.provision", owner=operations.owner,
                             limit=MAX_CUT_OFF)]


def settle_cut_off(cut_off: list[Operation], asked_to_boot: list[str], vms: VMService,
                   operations: OperationService, vm_operations: VMOperations,
                   keys: IdempotentCreates) -> set[str]:
    """After the VMs were reconciled: remove the VMs of ``cut_off`` operations and the VMs of
    ``asked_to_boot`` (creates whose operation was never written) that never ran, and say so in
    their operations; carry on the operations of VMs that boot on. Returns those operations'
    ids (the rest are failed as interrupted)."""
    removed, carried = set(), set()
    for op in cut_off:
        try:
            vm = vms.get(op.target or "", op.project)
        except NotFound:
            # Its disk was still being made (its image fetched): the reconcile removed it. The
            # create had answered, so its key names the VM: the key goes, and a retry makes it.
            keys.forget_operation(op.id)
            operations.fail(op.id, REMOVED.format(name=op.target))
            continue
        if op.kind == "vm.provision" and vm.state == VMState.STOPPED:
            # Its disk was made before the crash: a stopped VM is what it asked for.
            operations.succeed(op.id, "VM is stopped", {"vm": vm.id, "state": vm.state.value})
            carried.add(op.id)
        elif vm.state in NEVER_RAN:
            left = _remove(vm.id, vm.name, vms, keys)
            removed.add(vm.id)
            operations.fail(op.id, LEFT.format(name=vm.name, why=left) if left else REMOVED.format(name=vm.name))
        elif vm.state in (VMState.STARTING, VMState.RUNNING):  # its QEMU ran, and boots on
            vm_operations.carry_on(op.id, vm.id)
            carried.add(op.id)
    for vm_id in asked_to_boot:
        if vm_id in removed:
            continue
        try:
            vm = vms.get(vm_id)
        except NotFound:
            continue
        if vm.state in NEVER_RAN:
            _remove(vm.id, vm.name, vms, keys)
    return carried


def _remove(vm_id: str, name: str, vms: VMService, keys: IdempotentCreates) -> str | None:
    """Remove the VM; None when done, else why it was left (the platform starts all the same)."""
    log.warning("removing VM %s: its create was cut off before it ever ran", name)
    try:
        vms.delete(vm_id, force=True)
    except Exception as err:  # e.g. a QEMU spawned just before the crash still making its files
        log.exception("could not remove VM %s, whose create was cut off", name)
        return str(err) or type(err).__name__
    keys.forget_vm(vm_id)
    return None
