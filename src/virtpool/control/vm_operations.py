"""VM actions as operations: each long action returns an operation that its VM's state
changes carry to the end.

The VM service does the work and records every state change as an event; this module listens
to those events and moves the operation that waits on that VM. An operation is registered
after its action was accepted (a refused action leaves no operation behind) and then reads the
VM's current state once, so that a change made before it was registered is not missed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.events import EventLog
from virtpool.control.operations import OperationService
from virtpool.control.store.tables import VMRow
from virtpool.control.vms import DEFAULT_STOP_TIMEOUT_S, VMService
from virtpool.control.vms.fetch import FETCH_SHARE
from virtpool.control.vms.lifecycle import CreateTracker
from virtpool.model.event import Event
from virtpool.model.operation import Operation
from virtpool.model.spec import VMSpec
from virtpool.model.states import VMState
from virtpool.model.vm import VMInfo

S = VMState


@dataclass(frozen=True)
class Plan:
    """What the states a VM passes through mean for one kind of operation."""

    goal: VMState
    # state -> (progress, message) on the way to the goal
    steps: dict[VMState, tuple[int, str]]


PLANS: dict[str, Plan] = {
    "vm.create": Plan(S.RUNNING, {S.STOPPED: (30, "disk created"), S.STARTING: (50, "booting")}),
    # A create without a boot whose host lacks the image: the fetch's progress, then stopped.
    "vm.provision": Plan(S.STOPPED, {}),
    "vm.start": Plan(S.RUNNING, {S.STARTING: (30, "booting")}),
    "vm.stop": Plan(S.STOPPED, {S.STOPPING: (30, "shutting down")}),
    "vm.restart": Plan(S.RUNNING, {S.STOPPING: (20, "shutting down"), S.STOPPED: (50, "stopped"),
                                   S.STARTING: (60, "booting")}),
}
PROVISION_FETCH_SPAN = 90  # the rest: the disk made from the image
FAILED_STATES = {S.ERROR: "failed", S.CRASHED: "crashed", S.DELETING: "was deleted"}


class VMOperations:
    """Start, stop, restart and create-and-start, each followed by an operation."""

    def __init__(self, sessions: sessionmaker[Session], vms: VMService, operations: OperationService,
                 events: EventLog) -> None:
        self._sessions = sessions
        self._vms = vms
        self._operations = operations
        self._lock = threading.Lock()
        self._watching: dict[str, tuple[str, Plan]] = {}  # vm id -> (operation id, plan)
        events.listen(self._on_event)

    def create(self, spec: VMSpec, *, actor: str, project_id: str) -> tuple[VMInfo, Operation]:
        """Create and boot a VM in ``project_id``: the VM (still being created) and the
        operation that follows it, at once. The disk is made, with the image fetched first
        when its host lacks it (the fetch's progress in the operation), and the VM booted, in
        the operation; a failure there fails the operation and leaves nothing of the VM. A
        create refused before it was accepted raises and leaves no operation, as any refusal."""
        begun: list[Operation] = []

        def track(vm: VMInfo) -> CreateTracker:
            op = self._begin("vm.create", vm.id, vm.name, actor, project_id,
                             message=f"creating the disk of VM '{vm.name}'")
            begun.append(op)
            return _Tracker(self._operations, op.id, partial(self._give_up, op.id, vm.id))

        vm = self._vms.create_and_boot(spec, project_id=project_id, track=track)
        if vm.state != S.CREATING:  # a warm VM taken: its state says how far it is
            self._advance(vm.id, vm.state, None)
        return vm, self._operations.get(begun[0].id)

    def create_stopped(self, spec: VMSpec, *, actor: str, project_id: str) -> tuple[VMInfo, Operation | None]:
        """Create a VM in ``project_id`` without booting it. When its host has the image the
        disk is made now, and the VM comes back stopped with no operation. When the host lacks
        it, the VM comes back still being created, with a ``vm.provision`` operation whose
        progress follows the image's fetch and which succeeds once the VM is stopped (a
        failure there fails it and leaves nothing of the VM). A refusal raises, as any."""
        begun: list[Operation] = []

        def track(vm: VMInfo) -> CreateTracker:
            op = self._begin("vm.provision", vm.id, vm.name, actor, project_id,
                             message=f"fetching the image of VM '{vm.name}' to host '{vm.host}'")
            begun.append(op)
            return _Tracker(self._operations, op.id, partial(self._give_up, op.id, vm.id),
                            fetch_span=PROVISION_FETCH_SPAN)

        vm = self._vms.create_in_background(spec, project_id=project_id, track=track)
        return vm, (self._operations.get(begun[0].id) if begun else None)

    def carry_on(self, op_id: str, vm_id: str) -> None:
        """Follow an existing create operation again (a restart found its VM booting on)."""
        with self._lock:
            self._watching[vm_id] = (op_id, PLANS["vm.create"])
        self._advance(vm_id, self._state_of(vm_id), None)

    def follow_create(self, vm_id: str, *, actor: str) -> Operation:
        """An operation that follows a VM whose create-and-boot lost its own (a crash came
        between the two): it moves on with the VM's state from where that is now."""
        with self._sessions() as session:
            name = session.scalar(select(VMRow.name).where(VMRow.id == vm_id))
        return self._follow("vm.create", vm_id, name or vm_id, actor)

    def start(self, ref: str, *, actor: str) -> Operation:
        vm = self._vms.start(ref)
        return self._follow("vm.start", vm.id, vm.name, actor)

    def stop(self, ref: str, *, actor: str, timeout: float = DEFAULT_STOP_TIMEOUT_S,
             force: bool = False) -> Operation:
        vm = self._vms.stop(ref, timeout=timeout, force=force)
        return self._follow("vm.stop", vm.id, vm.name, actor)

    def restart(self, ref: str, *, actor: str, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> Operation:
        vm = self._vms.restart(ref, timeout=timeout)
        return self._follow("vm.restart", vm.id, vm.name, actor)

    def _follow(self, kind: str, vm_id: str, name: str, actor: str) -> Operation:
        """Follow the VM with a new operation of ``kind`` from its state now."""
        with self._sessions() as session:
            project_id = session.scalar(select(VMRow.project_id).where(VMRow.id == vm_id))
        op = self._begin(kind, vm_id, name, actor, project_id)
        self._advance(vm_id, self._state_of(vm_id), None)
        return self._operations.get(op.id)

    def _begin(self, kind: str, vm_id: str, name: str, actor: str, project_id: str | None,
               message: str | None = None) -> Operation:
        """A new operation of ``kind`` that the VM's state changes move from now on."""
        op = self._operations.begin(kind, name, actor=actor, project_id=project_id, message=message)
        with self._lock:
            previous = self._watching.get(vm_id)
            self._watching[vm_id] = (op.id, PLANS[kind])
        if previous is not None:
            self._operations.fail(previous[0], f"superseded by a later {kind} of VM '{name}'")
        return op

    def _give_up(self, op_id: str, vm_id: str, error: str) -> None:
        """Fail ``op_id`` with ``error`` and stop following its VM (whose removal is no news)."""
        with self._lock:
            if self._watching.get(vm_id, ("",))[0] == op_id:
                del self._watching[vm_id]
        self._operations.fail(op_id, error)

    def _state_of(self, vm_id: str) -> VMState | None:
        with self._sessions() as session:
            state = session.scalar(select(VMRow.state).where(VMRow.id == vm_id))
        return S(state) if state is not None else None

    def _on_event(self, event: Event) -> None:
        if event.kind != "vm.state" or not event.data or "id" not in event.data:
            return
        self._advance(event.data["id"], S(event.data["state"]), event.data.get("error"))

    def _advance(self, vm_id: str, state: VMState | None, error: str | None) -> None:
        with self._lock:
            watched = self._watching.get(vm_id)
            if watched is None:
                return
            op_id, plan = watched
            finished = state is None or state == plan.goal or state in FAILED_STATES or state == S.UNKNOWN
            if finished:
                del self._watching[vm_id]
        if state is None:
            self._operations.fail(op_id, "the VM was deleted")
        elif state == plan.goal:
            self._operations.succeed(op_id, f"VM is {state.value}", {"vm": vm_id, "state": state.value})
        elif state == S.UNKNOWN:
            # Its host went out of reach mid-way: nobody can tell how far it got.
            self._operations.fail(op_id, f"{error or 'its host is unreachable'}: this operation cannot "
                                         "finish; the VM is reconciled when its host is back")
        elif state in FAILED_STATES:
            self._operations.fail(op_id, error or f"the VM {FAILED_STATES[state]}")
        elif state in plan.steps:
            self._operations.progress(op_id, *plan.steps[state])



@dataclass(frozen=True)
class _Tracker:
    """A create-and-boot's operation, as the VM service's worker reports to it."""

    operations: OperationService
    op_id: str
    give_up: Callable[[str], None]
    # How much of this operation the fetch is: a create-and-boot's first FETCH_SHARE percent,
    # most of a provision (which only makes the disk after it).
    fetch_span: int = FETCH_SHARE

    def progress(self, percent: int, message: str) -> None:
        self.operations.progress(self.op_id, percent * self.fetch_span // FETCH_SHARE, message)

    def failed(self, message: str) -> None:
        self.give_up(message)
