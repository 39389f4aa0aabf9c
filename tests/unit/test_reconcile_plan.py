"""The pure reconcile plan and the meaning of agent events (control/vms/reconcile.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from virtpool.control.vms.reconcile import Do, on_event, plan
from virtpool.model.agent import AgentEvent
from virtpool.model.states import VMState as S


@pytest.mark.parametrize(("recorded", "status", "do", "state"), [
    (S.CREATING, None, Do.REMOVE, None),
    (S.DELETING, "running", Do.REMOVE, None),
    (S.RUNNING, None, Do.MARK, S.CRASHED),
    (S.PAUSED, None, Do.MARK, S.CRASHED),
    (S.RUNNING, "paused", Do.MARK, S.PAUSED),
    (S.PAUSED, "running", Do.MARK, S.RUNNING),
    (S.RUNNING, "running", Do.NOTHING, None),
    (S.STARTING, None, Do.MARK, S.ERROR),
    (S.STARTING, "running", Do.FINISH_BOOT, None),
    (S.STOPPING, "running", Do.FINISH_STOP, None),
    (S.STOPPED, "running", Do.KILL, None),
    (S.CRASHED, "paused", Do.KILL, None),
    (S.STOPPED, None, Do.NOTHING, None),
])
def test_plan(recorded: S, status: str | None, do: Do, state: S | None) -> None:
    step = plan(recorded, status)  # type: ignore[arg-type]
    assert (step.do, step.state) == (do, state)


def event(kind: str, **data: object) -> AgentEvent:
    return AgentEvent(seq=1, kind=kind, vm_id="v", at=datetime.now(UTC), data=data)  # type: ignore[arg-type]


def test_an_exit_the_guest_asked_for_stops_the_vm() -> None:
    step = on_event(S.RUNNING, event("vm.exited", guest_initiated=True), qemu_runs_now=False)
    assert (step.do, step.state) == (Do.MARK, S.STOPPED)


def test_an_exit_nobody_asked_for_is_a_crash() -> None:
    step = on_event(S.PAUSED, event("vm.exited", guest_initiated=False), qemu_runs_now=False)
    assert (step.do, step.state) == (Do.MARK, S.CRASHED)
    assert step.error and "without being asked" in step.error


@pytest.mark.parametrize("recorded", [S.STARTING, S.STOPPING, S.STOPPED, S.DELETING, S.CRASHED])
def test_an_exit_during_work_of_a_worker_or_after_it_changes_nothing(recorded: S) -> None:
    assert on_event(recorded, event("vm.exited"), qemu_runs_now=False).do == Do.NOTHING


def test_the_exit_of_an_older_qemu_is_no_news_once_a_newer_one_runs() -> None:
    # A late event after a restart: applying it would mark a running VM crashed.
    assert on_event(S.RUNNING, event("vm.exited"), qemu_runs_now=True).do == Do.NOTHING


@pytest.mark.parametrize("kind", ["vm.powered_off", "vm.balloon", "vm.io_error", "vm.resumed"])
def test_other_events_change_no_record(kind: str) -> None:
    assert on_event(S.RUNNING, event(kind), qemu_runs_now=False).do == Do.NOTHING


def test_a_guest_paused_by_a_full_disk_is_paused_with_the_reason() -> None:
    step = on_event(S.RUNNING, event("vm.io_error", action="stop", nospace=True, device="",
                                     operation="write"), qemu_runs_now=False)
    assert (step.do, step.state) == (Do.MARK, S.PAUSED)
    assert step.error and step.error.startswith("io-error: ") and "full" in step.error


def test_an_io_error_qemu_only_reported_changes_no_record() -> None:
    assert on_event(S.RUNNING, event("vm.io_error", action="report"), qemu_runs_now=False).do == Do.NOTHING


def test_a_resume_after_a_disk_error_runs_the_vm_again() -> None:
    step = on_event(S.PAUSED, event("vm.resumed", after="io_error"), qemu_runs_now=False,
                    recorded_error="io-error: its disk's filesystem on the host is full")
    assert (step.do, step.state) == (Do.MARK, S.RUNNING)


def test_a_late_resume_does_not_undo_a_pause_the_user_asked_for() -> None:
    step = on_event(S.PAUSED, event("vm.resumed", after="io_error"), qemu_runs_now=False,
                    recorded_error=None)
    assert step.do == Do.NOTHING
