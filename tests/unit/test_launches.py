"""The launch records that let a restarted agent carry out a guest's reboot."""

from __future__ import annotations

from pathlib import Path

from virtpool.model.spec import VMSpec
from virtpool.node.launches import Launch, LaunchRecords


def test_a_launch_outlives_the_agent_and_goes_with_its_vm(tmp_path: Path) -> None:
    records = LaunchRecords(tmp_path / "launches")
    spec = VMSpec(name="web1", image="default", cpus=2)
    records.put("vm-1", Launch(spec, 7, 90.0))

    again = LaunchRecords(tmp_path / "launches")  # a new agent process
    found = again.get("vm-1")
    assert found is not None and (found.spec, found.slot, found.boot_timeout_s) == (spec, 7, 90.0)
    assert (tmp_path / "launches").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "launches" / "vm-1.json").stat().st_mode & 0o777 == 0o600

    again.drop("vm-1")
    assert again.get("vm-1") is None and LaunchRecords(tmp_path / "launches").get("vm-1") is None


def test_an_unreadable_record_means_no_reboot_not_a_crash_of_the_agent(tmp_path: Path) -> None:
    (tmp_path / "launches").mkdir()
    (tmp_path / "launches" / "vm-2.json").write_text("{not json")
    assert LaunchRecords(tmp_path / "launches").get("vm-2") is None
