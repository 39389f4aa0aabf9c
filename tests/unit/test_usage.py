"""The usage history: its arithmetic (counters between two samples turned into rates), and its
store in a real SQLite database (bounded by the retention sweep, kept across a restart of the
recorder, forgetting deleted VMs). Through a real server and browser: tests/browser/."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from virtpool.control import usage_history as uh
from virtpool.control.store import db
from virtpool.control.store.tables import UsageSampleRow, VMRow
from virtpool.model.errors import NotFound
from virtpool.model.spec import HostInfo
from virtpool.model.usage import guest_memory_mib, point_between
from virtpool.model.vm import VMInfo, VMStats


def stats(**figures: float) -> VMStats:
    return VMStats(name="vm", state="running", memory_boot_mib=512, **figures)


def test_rates_come_from_the_counters_over_the_interval() -> None:
    before = stats(cpu_time_s=10.0, disk_read_bytes=1000, disk_written_bytes=0, disk_read_ops=10,
                   disk_write_ops=0, net_rx_bytes=0, net_tx_bytes=50)
    now = stats(cpu_time_s=12.5, cpu_percent=99.0, disk_read_bytes=6000, disk_written_bytes=2500,
                disk_read_ops=20, disk_write_ops=5, net_rx_bytes=500, net_tx_bytes=50)
    point = point_between(before, 100.0, now, 105.0)
    assert point.t == 105.0
    # 2.5 CPU-seconds in 5 s: 50 % of one CPU, whatever the agent's own last figure said.
    assert point.cpu_percent == 50.0
    assert (point.disk_read_bps, point.disk_write_bps) == (1000.0, 500.0)
    assert (point.disk_read_iops, point.disk_write_iops) == (2.0, 1.0)
    assert (point.net_rx_bps, point.net_tx_bps) == (100.0, 0.0)


def test_first_sample_has_no_rates_and_keeps_the_agents_cpu_figure() -> None:
    point = point_between(None, 0.0, stats(cpu_time_s=3.0, cpu_percent=12.5, disk_read_bytes=9), 5.0)
    assert point.cpu_percent == 12.5
    assert point.disk_read_bps is None and point.net_rx_bps is None


def test_a_counter_that_went_back_gives_no_rate() -> None:
    # The VM restarted between the samples: its counters began again from zero.
    point = point_between(stats(cpu_time_s=50.0, disk_read_bytes=10_000), 0.0,
                          stats(cpu_time_s=1.0, disk_read_bytes=100), 5.0)
    assert point.cpu_percent is None and point.disk_read_bps is None


def test_unknown_counters_stay_unknown() -> None:
    # A counter the host cannot read (e.g. no guest agent answer yet): no made-up zero.
    point = point_between(stats(cpu_time_s=1.0), 0.0, stats(cpu_time_s=2.0), 5.0)
    assert point.net_rx_bps is None and point.net_tx_bps is None and point.disk_read_bps is None


def test_guest_memory_is_total_minus_free_else_the_balloon() -> None:
    assert guest_memory_mib(stats(guest_total_mib=480.0, guest_free_mib=400.0, balloon_mib=512.0)) == 80.0
    assert guest_memory_mib(stats(balloon_mib=256.0)) == 256.0
    assert guest_memory_mib(stats()) is None


def test_packet_rates_come_from_the_packet_counters() -> None:
    point = point_between(stats(net_rx_packets=10, net_tx_packets=0), 0.0,
                          stats(net_rx_packets=60, net_tx_packets=25), 5.0)
    assert (point.net_rx_pps, point.net_tx_pps) == (10.0, 5.0)


class FakeVMs:
    """What the recorder reads of VMService: their stats (counters that rise). The VMs are rows
    of the real database, which the recorder reads for the active ones."""

    local_host = "h1"

    def __init__(self, engine: object) -> None:
        now = datetime.now(UTC)
        self.vms = [VMInfo(id=f"id{i}", name=f"vm{i}", project="default", image="default", cpus=1,
                           memory_mib=256, disk_mib=1024, ports=[], kernel_args="", accel="tcg",
                           max_memory_mib=256, cpu_cap_pct=None, cpu_weight=100, disk_iops=None,
                           disk_bps=None, state="running", error=None, host="h1" if i < 2 else "h2",
                           created_at=now, updated_at=now) for i in range(3)]
        with Session(engine) as session, session.begin():  # type: ignore[arg-type]
            session.add_all(VMRow(id=vm.id, name=vm.name, project_id="default", image="default", cpus=1,
                                  memory_mib=256, disk_mib=1024, kernel_args="", accel="auto",
                                  max_memory_mib=256, cpu_weight=100, slot=n, state="running", host=vm.host)
                            for n, vm in enumerate(self.vms))
        self.cpu = 0.0
        self.net = 0

    def stats(self, vm_id: str, tolerant: bool = False) -> VMStats:
        if vm_id not in {vm.id for vm in self.vms}:
            raise NotFound(f"no VM {vm_id}")
        self.cpu += 0.5
        self.net += 5000
        return stats(cpu_time_s=self.cpu, qemu_rss_mib=100.0, net_rx_bytes=self.net, net_tx_bytes=self.net // 2)


class FakeAgents:
    """Hosts h1 (disk figures) and h2 (whose agent cannot say); h3 has no agent."""

    local_name = "h1"

    def attached(self) -> list[str]:
        return ["h1", "h2"]

    def for_host(self, name: str) -> object:
        return self

    def host_info(self) -> HostInfo:
        return HostInfo(hostname="h1", cpus=4, memory_mib=4096, disk_total_mib=1000, disk_free_mib=400,
                        accel="tcg", accel_reason="test", qemu_version="-", data_dir="/nonexistent")


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = db.open_database(db.sqlite_url(tmp_path / "state.db"))
    yield engine
    engine.dispose()


def rows(engine: object) -> int:
    with Session(engine) as session:  # type: ignore[arg-type]
        return session.scalar(select(func.count()).select_from(UsageSampleRow)) or 0


def test_the_history_is_bounded_survives_a_restart_and_forgets_deleted_vms(engine: object) -> None:
    clock = [1000.0]
    vms = FakeVMs(engine)
    sessions = db.session_factory(engine)  # type: ignore[arg-type]
    recorder = uh.UsageRecorder(sessions, vms, FakeAgents(), clock=lambda: clock[0])  # type: ignore[arg-type]
    per_hour = int(uh.RETENTION_S / uh.INTERVAL_S)
    for _ in range(per_hour * 2):  # two hours of samples
        recorder.sample()
        clock[0] += uh.INTERVAL_S
    recorder.close()
    # One hour kept: the table holds at most an hour of rows per VM.
    assert rows(engine) <= 3 * (per_hour + 1)
    history = recorder.history(vms.vms[0])
    assert len(history.points) <= per_hour + 1
    assert history.points[0].t >= clock[0] - uh.RETENTION_S - uh.INTERVAL_S
    assert history.points[-1].net_rx_bps is not None and history.points[-1].net_rx_bps > 0

    # A new recorder (a restarted server) answers the same hour, and its first round has rates
    # from the last stored sample instead of a gap.
    again = uh.UsageRecorder(sessions, vms, FakeAgents(), clock=lambda: clock[0])  # type: ignore[arg-type]
    assert again.history(vms.vms[0]).points == history.points
    again.sample()
    assert again.history(vms.vms[0]).points[-1].cpu_percent is not None
    assert {u.host: u.memory_used_mib for u in again.host_use()} == {"h1": 200.0, "h2": 100.0}
    assert {u.host: u.disk_used_mib for u in again.host_use()} == {"h1": 600.0, "h2": 600.0}
    assert sorted((e.name, e.host) for e in again.latest()) == [("vm0", "h1"), ("vm1", "h1"), ("vm2", "h2")]

    # A deleted VM: its rows go at the next sweep.
    with Session(engine) as session, session.begin():  # type: ignore[arg-type]
        session.execute(delete(VMRow).where(VMRow.id == "id0"))
    del vms.vms[0]
    clock[0] += uh.INTERVAL_S
    again.sample()
    with Session(engine) as session:  # type: ignore[arg-type]
        assert session.scalar(select(func.count()).where(UsageSampleRow.vm_id == "id0")) == 0
    assert [e.name for e in again.latest()] == ["vm1", "vm2"]
    again.close()


def test_a_vm_whose_host_has_no_agent_is_not_sampled(engine: object) -> None:
    vms = FakeVMs(engine)
    with Session(engine) as session, session.begin():  # type: ignore[arg-type]
        session.execute(update(VMRow).where(VMRow.id == "id2").values(host="h3"))
    recorder = uh.UsageRecorder(db.session_factory(engine), vms, FakeAgents())  # type: ignore[arg-type]
    assert recorder.sample() == 2
    recorder.close()


def test_only_active_vms_are_sampled(engine: object) -> None:
    vms = FakeVMs(engine)
    with Session(engine) as session, session.begin():  # type: ignore[arg-type]
        session.execute(update(VMRow).where(VMRow.id == "id0").values(state="stopped"))
    recorder = uh.UsageRecorder(db.session_factory(engine), vms, FakeAgents())  # type: ignore[arg-type]
    assert recorder.sample() == 2
    assert sorted(e.name for e in recorder.latest()) == ["vm1", "vm2"]
    recorder.close()
