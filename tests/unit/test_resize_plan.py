"""What a resize request means for a VM: validated, split into record, live part and notes.

Whether its host can take the new shape is the scheduler's (tests/unit/test_placement_db.py)."""

from datetime import UTC, datetime

import pytest

from virtpool.model.errors import Conflict, InvalidRequest
from virtpool.model.resize import plan_resize
from virtpool.model.spec import Resize
from virtpool.model.states import VMState
from virtpool.model.vm import VMInfo


def vm(**overrides: object) -> VMInfo:
    now = datetime.now(UTC)
    fields = dict(id="x", name="web", image="default", cpus=1, memory_mib=256, disk_mib=1024, ports=[],
                  kernel_args="", accel="auto", max_memory_mib=512, cpu_cap_pct=None, cpu_weight=100,
                  disk_iops=None, disk_bps=None, state=VMState.RUNNING, error=None, host="h",
                  created_at=now, updated_at=now)
    fields.update(overrides)
    return VMInfo(**fields)


def test_empty_request_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        plan_resize(vm(), Resize(), running=True)


def test_memory_goes_through_the_balloon_when_running() -> None:
    plan = plan_resize(vm(), Resize(memory_mib=384), running=True)
    assert plan.columns == {"memory_mib": 384}
    assert plan.live is not None and plan.live.balloon_mib == 384


def test_stopped_vm_gets_only_its_record_changed() -> None:
    plan = plan_resize(vm(state=VMState.STOPPED), Resize(memory_mib=384, cpus=2), running=False)
    assert plan.live is None
    assert plan.columns == {"memory_mib": 384, "cpus": 2}
    assert plan.notes == []


def test_memory_above_the_ceiling_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="at most 512 MiB"):
        plan_resize(vm(), Resize(memory_mib=1024), running=True)


def test_ceiling_changes_only_when_stopped() -> None:
    with pytest.raises(Conflict):
        plan_resize(vm(), Resize(max_memory_mib=1024), running=True)
    plan = plan_resize(vm(state=VMState.STOPPED), Resize(max_memory_mib=1024), running=False)
    assert plan.columns["max_memory_mib"] == 1024


def test_lowering_the_ceiling_below_memory_lowers_memory_with_it() -> None:
    plan = plan_resize(vm(state=VMState.STOPPED, memory_mib=512), Resize(max_memory_mib=300), running=False)
    assert plan.columns == {"max_memory_mib": 300, "memory_mib": 300}


def test_a_change_of_cpus_waits_for_a_boot() -> None:
    plan = plan_resize(vm(), Resize(cpus=2), running=True)
    assert plan.columns == {"cpus": 2} and "next boot" in plan.notes[0]


def test_caps_and_throttles_take_zero_as_no_limit() -> None:
    plan = plan_resize(vm(cpu_cap_pct=50, disk_iops=100, disk_bps=10_000_000),
                       Resize(cpu_cap_pct=0, disk_iops=0), running=True)
    assert plan.columns == {"cpu_cap_pct": None, "disk_iops": None, "disk_bps": 10_000_000}
    assert plan.live is not None
    assert plan.live.cpu_cap_pct == 0 and plan.live.throttle == (0, 10_000_000)


def test_disks_only_grow() -> None:
    with pytest.raises(InvalidRequest, match="only grow"):
        plan_resize(vm(), Resize(disk_mib=512), running=True)
    plan = plan_resize(vm(), Resize(disk_mib=2048), running=True)
    assert plan.live is not None and plan.live.disk_mib == 2048
