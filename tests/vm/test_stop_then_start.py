"""A forced stop answers only once the host has tidied up after the VM's QEMU, however long that
takes, and the agent serves its other calls meanwhile: a start right after the stop works.

CI once saw `vm start` fail with "VM 'a3' has QEMU stopping; this needs it idle" right after a
`vm stop --force` had answered: the stop had given up waiting for its QEMU's teardown (there,
because the watcher missed the monitor's hang-up: tests/unit/test_qmp_events_end.py) and said
nothing. Here the teardown is held on purpose, against a real QEMU and the in-process agent.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import link_image, passable, qemu_pids, wait_for
from virtpool.model.spec import VMSpec
from virtpool.node.agent import LocalAgent
from virtpool.node.net import passt
from virtpool.node.vm import HARD_STOP_GRACE_S, StateError

BOOT_S = 240.0  # a loaded shared machine under TCG
HOLD_S = 60.0  # the longest the teardown is held (the test releases it well before)


@pytest.fixture()
def agent(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[tuple[LocalAgent, Path]]:
    data = tmp_path_factory.mktemp("pst")  # short: QEMU's socket paths must stay under 108 bytes
    (data / "images").mkdir()
    passable(data)
    link_image(image_cache, data)
    local = LocalAgent(data, net_prefix="pst")
    yield local, data
    local.close()


def test_a_forced_stop_waits_for_the_teardown_and_a_start_at_once_works(
        agent: tuple[LocalAgent, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    impl, data = agent
    vm_id = uuid.uuid4().hex
    spec = VMSpec(name="again")
    entered, release = threading.Event(), threading.Event()
    impl.create_disk(vm_id, "default", 1024)
    try:
        impl.start_vm(vm_id, spec, 0)
        impl.wait_ready(vm_id, BOOT_S)

        real_stop = passt.stop

        def held_stop(pidfile: Path) -> None:
            entered.set()
            release.wait(HOLD_S)
            real_stop(pidfile)

        monkeypatch.setattr(passt, "stop", held_stop)
        outcome: list[BaseException | None] = []

        def stop() -> None:
            try:
                impl.kill_vm(vm_id)
                outcome.append(None)
            except BaseException as err:  # noqa: BLE001 - handed to the test's thread
                outcome.append(err)

        stopper = threading.Thread(target=stop)
        stopper.start()
        assert entered.wait(BOOT_S), "the VM's QEMU never reached its teardown"
        assert wait_for(lambda: not qemu_pids(data / "vms" / vm_id), 30)

        # While the teardown is held (longer than the stop's grace before SIGKILL), the agent
        # answers another call on the same VM at once, and it names the state the VM is in.
        answered: list[BaseException] = []
        caller = threading.Thread(target=lambda: answered.append(_error_of(impl.pause_vm, vm_id)))
        caller.start()
        caller.join(HOLD_S / 2)
        assert not caller.is_alive(), "the agent's loop was blocked by the VM's teardown"
        assert isinstance(answered[0], StateError) and "stopping" in answered[0].message, answered
        stopper.join(HARD_STOP_GRACE_S + 1)
        assert stopper.is_alive() and not outcome, "the stop answered before the teardown ended"

        release.set()
        stopper.join(HOLD_S)
        assert outcome == [None], outcome
        assert impl.start_vm(vm_id, spec, 0) > 0  # at once: the stop left the VM idle
        impl.wait_ready(vm_id, BOOT_S)
        assert impl.exec_vm(vm_id, ["uname", "-n"], 60).stdout.strip() == "again"
    finally:
        release.set()
        impl.kill_vm(vm_id)
        impl.destroy_vm(vm_id)
    assert not qemu_pids(data / "vms" / vm_id)


def _error_of(call: Callable[[str], None], vm_id: str) -> BaseException:
    try:
        call(vm_id)
    except BaseException as err:  # noqa: BLE001 - the test looks at what was raised
        return err
    return AssertionError("the call succeeded on a VM that is stopping")
