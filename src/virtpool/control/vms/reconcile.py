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


IO_ERROR = "io-error"  # how the error of a VM that a disk error paused starts


def io_error_reason(data: dict[str, object]) -> str:
    """What a ``vm.io_error`` event's QEMU details mean, for the VM's record and its event."""
    if data.get("nospace"):
        return (f"{IO_ERROR}: its disk's filesystem on the host is full, so QEMU paused it; it "
                "resumes by itself once there is room again")
    what = data.get("reason") or "the disk failed"
    return f"{IO_ERROR}: {what} ({data.get('operation') or 'I/O'} on {data.get('device') or 'its disk'})"


def on_event(recorded: VMState, event: AgentEvent, qemu_runs_now: bool,
             recorded_error: str | None = None) -> Step:
    """What an agent event means for a VM recorded as ``recorded`` (with ``recorded_error``).

    ``vm.exited`` changes a record only for a VM the record says runs: STARTING and STOPPING
    belong to the worker that set them (it sees the exit itself). An exit of an older QEMU,
    reported after a newer one started (``qemu_runs_now``), is no news about the VM.

    ``vm.io_error`` with action "stop" (QEMU paused the guest) makes a RUNNING VM PAUSED with
    the reason; ``vm.resumed`` makes it RUNNING again, but only a VM a disk error paused (a
    late resume must not undo a pause the user asked for since).
    """
    if event.kind == "vm.io_error":
        if recorded == S.RUNNING and event.data.get("action") == "stop":
            return Step(Do.MARK, S.PAUSED, io_error_reason(event.data))
        return Step(Do.NOTHING)
    if event.kind == "vm.resumed":
        if recorded == S.PAUSED and (recorded_error or "").startswith(IO_ERROR):
            return Step(Do.MARK, S.RUNNING)
        return Step(Do.NOTHING)
    if event.kind != "vm.exited" or recorded not in (S.RUNNING, S.PAUSED) or qemu_runs_now:
        return Step(Do.NOTHING)
    if event.data.get("guest_initiated"):
        return Step(Do.MARK, S.STOPPED, stopped_by="guest")
    return Step(Do.MARK, S.CRASHED, "QEMU exited without being asked to (killed, or it crashed)")
