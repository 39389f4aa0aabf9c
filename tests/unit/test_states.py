"""The VM lifecycle: which actions are allowed from which state, and the transition table."""

from __future__ import annotations

import pytest

from virtpool.model.errors import Conflict, StateError
from virtpool.model.states import (
    ACTIONS,
    ACTIVE,
    TRANSITIONS,
    VMState,
    check_action,
    check_transition,
)

S = VMState

# The state each action moves a VM into (as the control plane claims it, see control/vms.py).
ACTION_TARGET = {
    "start": S.STARTING,
    "stop": S.STOPPING,
    "restart": S.STOPPING,
    "pause": S.PAUSED,
    "resume": S.RUNNING,
    "delete": S.DELETING,
    "force-delete": S.DELETING,
}


class TestCheckAction:
    @pytest.mark.parametrize(
        ("state", "action"),
        [
            (S.STOPPED, "start"),
            (S.CRASHED, "start"),
            (S.ERROR, "start"),
            (S.RUNNING, "stop"),
            (S.PAUSED, "stop"),
            (S.STARTING, "stop"),
            (S.RUNNING, "restart"),
            (S.RUNNING, "pause"),
            (S.PAUSED, "resume"),
            (S.RUNNING, "exec"),
            (S.STOPPED, "delete"),
            (S.RUNNING, "force-delete"),
            (S.CREATING, "force-delete"),
        ],
    )
    def test_allowed(self, state: VMState, action: str) -> None:
        check_action("web1", state, action)  # does not raise

    @pytest.mark.parametrize(
        ("state", "action"),
        [
            (S.RUNNING, "start"),
            (S.STARTING, "start"),
            (S.PAUSED, "start"),
            (S.STOPPED, "stop"),
            (S.STOPPED, "pause"),
            (S.PAUSED, "pause"),
            (S.RUNNING, "resume"),
            (S.STOPPED, "exec"),
            (S.PAUSED, "exec"),
            (S.RUNNING, "delete"),
            (S.CREATING, "delete"),
            (S.DELETING, "delete"),
            (S.DELETING, "force-delete"),
            (S.DELETING, "start"),
        ],
    )
    def test_refused(self, state: VMState, action: str) -> None:
        with pytest.raises(StateError):
            check_action("web1", state, action)

    def test_cannot_start_running_vm_message(self) -> None:
        with pytest.raises(StateError) as caught:
            check_action("web1", S.RUNNING, "start")
        err = caught.value
        assert "web1" in err.message
        assert "running" in err.message
        assert "start" in err.message
        # the hint lists the states start is allowed from
        assert err.hint is not None
        for allowed in ("stopped", "crashed", "error"):
            assert allowed in err.hint
        assert "running" not in err.hint
        assert err.vm == "web1"
        assert err.actual == "running"
        assert err.action == "start"
        assert err.allowed == frozenset({"stopped", "crashed", "error"})

    def test_state_error_is_a_conflict(self) -> None:
        with pytest.raises(Conflict) as caught:
            check_action("web1", S.STOPPED, "pause")
        assert caught.value.status == 409
        assert "it is stopped" in str(caught.value)

    def test_unknown_action_is_not_silently_allowed(self) -> None:
        with pytest.raises(KeyError):
            check_action("web1", S.RUNNING, "explode")


class TestCheckTransition:
    def test_allowed(self) -> None:
        check_transition("web1", S.STOPPED, S.STARTING)
        check_transition("web1", S.STARTING, S.RUNNING)
        check_transition("web1", S.RUNNING, S.CRASHED)

    def test_refused_message_names_states(self) -> None:
        with pytest.raises(StateError) as caught:
            check_transition("web1", S.STOPPED, S.RUNNING)
        err = caught.value
        assert "web1" in err.message
        assert "stopped" in err.message
        assert "running" in err.message
        assert err.allowed == frozenset({"starting", "deleting"})

    def test_nothing_leaves_deleting(self) -> None:
        for new in VMState:
            with pytest.raises(StateError) as caught:
                check_transition("web1", S.DELETING, new)
            assert "none" in (caught.value.hint or "")

    def test_no_self_transitions(self) -> None:
        for state in VMState:
            with pytest.raises(StateError):
                check_transition("web1", state, state)


class TestTables:
    def test_every_state_has_a_row(self) -> None:
        assert set(TRANSITIONS) == set(VMState)

    def test_transition_targets_are_states(self) -> None:
        for old, targets in TRANSITIONS.items():
            assert targets <= set(VMState), old

    def test_deleting_is_terminal(self) -> None:
        assert TRANSITIONS[S.DELETING] == frozenset()
        # and every other state can eventually reach it (no VM is stuck forever)
        for state in VMState:
            seen = {state}
            frontier = [state]
            while frontier:
                for nxt in TRANSITIONS[frontier.pop()]:
                    if nxt not in seen:
                        seen.add(nxt)
                        frontier.append(nxt)
            assert S.DELETING in seen, state

    def test_action_start_states_exist(self) -> None:
        for action, states in ACTIONS.items():
            assert states, action
            assert states <= set(VMState), action

    def test_every_action_has_a_known_target(self) -> None:
        # exec and resize act on a VM without changing its state.
        assert set(ACTIONS) == set(ACTION_TARGET) | {"exec", "resize"}

    @pytest.mark.parametrize("action", sorted(ACTION_TARGET))
    def test_action_targets_are_allowed_transitions(self, action: str) -> None:
        """An action allowed from a state must lead somewhere the lifecycle allows."""
        target = ACTION_TARGET[action]
        for state in ACTIONS[action]:
            check_transition("web1", state, target)

    def test_force_delete_from_everything_but_deleting(self) -> None:
        assert ACTIONS["force-delete"] == frozenset(VMState) - {S.DELETING}

    def test_nothing_acts_on_a_deleting_vm(self) -> None:
        for action, states in ACTIONS.items():
            assert S.DELETING not in states, action

    def test_active_states_have_a_process(self) -> None:
        assert ACTIVE == {S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING}
        # a VM with a process can always be found crashed
        for state in ACTIVE:
            assert S.CRASHED in TRANSITIONS[state]

    def test_values_are_lowercase_strings(self) -> None:
        for state in VMState:
            assert state.value == state.name.lower()
            assert VMState(state.value) is state
