"""VM states and the only transitions between them.

Every state change virtpool makes goes through :func:`check_transition`, so the table below
is the whole lifecycle. The store writes the new state *before* the side effect it announces
(``starting`` before QEMU is spawned, ``deleting`` before files are removed), so that after a
crash the reconciler knows what was under way.
"""

from __future__ import annotations

from enum import StrEnum

from virtpool.model.errors import StateError


class VMState(StrEnum):
    CREATING = "creating"  # row written, disk being made
    STOPPED = "stopped"
    STARTING = "starting"  # QEMU spawned, waiting for the guest agent
    RUNNING = "running"  # the guest agent answers
    PAUSED = "paused"  # vCPUs stopped, memory kept
    STOPPING = "stopping"
    CRASHED = "crashed"  # QEMU went away without being asked to
    ERROR = "error"  # a start that failed (boot timeout, QEMU refused)
    DELETING = "deleting"
    # Its host is unreachable (its lease lapsed): it may run on or not; the state it had is
    # kept (``known_state``) and comes back, then converged, when the host does.
    UNKNOWN = "unknown"


S = VMState

# state -> states it may move to
TRANSITIONS: dict[VMState, frozenset[VMState]] = {
    # STARTING: a create-and-boot goes from its disk straight to booting.
    S.CREATING: frozenset({S.STOPPED, S.STARTING, S.DELETING}),
    S.STOPPED: frozenset({S.STARTING, S.DELETING}),
    # DELETING from an active state is `delete --force`: the process is killed first.
    S.STARTING: frozenset({S.RUNNING, S.ERROR, S.CRASHED, S.STOPPING, S.DELETING, S.UNKNOWN}),
    S.RUNNING: frozenset({S.STOPPING, S.PAUSED, S.CRASHED, S.STOPPED, S.DELETING, S.UNKNOWN}),
    S.PAUSED: frozenset({S.RUNNING, S.STOPPING, S.CRASHED, S.STOPPED, S.DELETING, S.UNKNOWN}),
    S.STOPPING: frozenset({S.STOPPED, S.CRASHED, S.DELETING, S.UNKNOWN}),
    S.CRASHED: frozenset({S.STARTING, S.STOPPED, S.DELETING}),
    S.ERROR: frozenset({S.STARTING, S.STOPPED, S.DELETING}),
    S.DELETING: frozenset(),
    # Back to the state it had when its host returns (then reconciled), or force-deleted.
    S.UNKNOWN: frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING, S.DELETING}),
}

# user actions -> the states they may start from
ACTIONS: dict[str, frozenset[VMState]] = {
    "start": frozenset({S.STOPPED, S.CRASHED, S.ERROR}),
    "stop": frozenset({S.RUNNING, S.PAUSED, S.STARTING}),
    "restart": frozenset({S.RUNNING, S.PAUSED}),
    "pause": frozenset({S.RUNNING}),
    "resume": frozenset({S.PAUSED}),
    "exec": frozenset({S.RUNNING}),
    "resize": frozenset({S.STOPPED, S.RUNNING, S.PAUSED, S.CRASHED, S.ERROR}),
    "delete": frozenset({S.STOPPED, S.CRASHED, S.ERROR}),
    "force-delete": frozenset(set(VMState) - {S.DELETING}),
}

# states in which a QEMU process is expected to exist (UNKNOWN: perhaps; nobody can tell)
ACTIVE: frozenset[VMState] = frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING})


def check_action(vm: str, state: VMState, action: str) -> None:
    """Raise :class:`StateError` unless ``action`` is allowed from ``state``."""
    allowed = ACTIONS[action]
    if state not in allowed:
        raise StateError(vm, state.value, action, frozenset(s.value for s in allowed))


def check_transition(vm: str, old: VMState, new: VMState) -> None:
    """Raise :class:`StateError` unless the lifecycle allows ``old`` → ``new``."""
    allowed = TRANSITIONS[old]
    if new not in allowed:
        raise StateError(vm, old.value, f"move to {new.value}", frozenset(s.value for s in allowed))
