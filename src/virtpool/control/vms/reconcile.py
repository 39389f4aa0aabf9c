"""Records and hosts brought into agreement: pure plans, applied by ``lifecycle.VMService``.

``plan`` compares a VM's record with what its host reports (after either side restarted) and
returns what to do; ``on_event`` says what an agent event means for a record. Both are pure,
so tests can check every case without a host; applying them is idempotent because every
change is a conditional transition (``... WHERE state IN (...)``) or a kill of what should not
run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from virtpool.model.agent import AgentEvent, RunStatus
from virtpool.model.states import VMState
from virtpool.model.vm import StopMethod

S = VMState


class Do(enum.Enum):
    NOTHING = "nothing"
    REMOVE = "remove"  # a create or delete was cut short: destroy what is on the host, drop the row
    MARK = "mark"  # set the record's state (and error) to what the host shows
    FINISH_BOOT = "finish-boot"  # QEMU runs, the guest was booting: wait for it again
    FINISH_STOP = "finish-stop"  # a stop was under way: carry it out
    KILL = "kill"  # QEMU runs although the record says it should not


@dataclass(frozen=True)
class Step:
    do: Do
    state: VMState | None = None
    error: str | None = None
    stopped_by: StopMethod | None = None


def plan(recorded: VMState, status: RunStatus | None) -> Step:
    """What to do for a VM recorded as ``recorded`` whose host reports ``status`` (None: no QEMU)."""
    if recorded in (S.CREATING, S.DELETING):
        return Step(Do.REMOVE)
    if recorded == S.UNKNOWN:
        return Step(Do.NOTHING)  # the lease monitor's: restored (restore_known) before a plan
    if recorded in (S.RUNNING, S.PAUSED):
        if status is None:
            return Step(Do.MARK, S.CRASHED, "QEMU was gone when virtpool restarted")
        if status != recorded.value:
            return Step(Do.MARK, S(status))
        return Step(Do.NOTHING)
    if recorded == S.STARTING:
        if status is None:
            return Step(Do.MARK, S.ERROR, "virtpool restarted during boot")
        return Step(Do.FINISH_BOOT)
    if recorded == S.STOPPING:
        return Step(Do.FINISH_STOP)
    if status is not None:
        return Step(Do.KILL)
    return Step(Do.NOTHING)


def on_event(recorded: VMState, event: AgentEvent, qemu_runs_now: bool) -> Step:
    """What an agent event means for a VM recorded as ``recorded``.

    Only ``vm.exited`` changes a record, and only for a VM the record says runs: STARTING and
    STOPPING belong to the worker that set them (it sees the exit itself). An exit of an older
    QEMU, reported after a newer one started (``qemu_runs_now``), is no news about the VM.
    """
    if event.kind != "vm.exited" or recorded not in (S.RUNNING, S.PAUSED) or qemu_runs_now:
        return Step(Do.NOTHING)
    if event.data.get("guest_initiated"):
        return Step(Do.MARK, S.STOPPED, stopped_by="guest")
    return Step(Do.MARK, S.CRASHED, "QEMU exited without being asked to (killed, or it crashed)")
