"""The usage history's arithmetic: counters between two samples turned into rates."""

from __future__ import annotations

from virtpool.model.usage import guest_memory_mib, point_between
from virtpool.model.vm import VMStats


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
    # User-mode networking keeps no counters: no made-up zero.
    point = point_between(stats(cpu_time_s=1.0), 0.0, stats(cpu_time_s=2.0), 5.0)
    assert point.net_rx_bps is None and point.net_tx_bps is None and point.disk_read_bps is None


def test_guest_memory_is_total_minus_free_else_the_balloon() -> None:
    assert guest_memory_mib(stats(guest_total_mib=480.0, guest_free_mib=400.0, balloon_mib=512.0)) == 80.0
    assert guest_memory_mib(stats(balloon_mib=256.0)) == 256.0
    assert guest_memory_mib(stats()) is None


class FakeVMs:
    """Just what the recorder reads of VMService: the VM list, their stats, the local host."""

    local_host = "h1"

    def __init__(self) -> None:
        from datetime import UTC, datetime

        from virtpool.model.vm import VMInfo

        now = datetime.now(UTC)
        self.vms = [VMInfo(id=f"id{i}", name=f"vm{i}", image="default", cpus=1, memory_mib=256, disk_mib=1024,
                           ports=[], kernel_args="", accel="tcg", max_memory_mib=256, cpu_cap_pct=None,
                           cpu_weight=100, disk_iops=None, disk_bps=None, state="running", error=None,
                           host="h1", created_at=now, updated_at=now) for i in range(2)]
        self.cpu = 0.0

    def list(self, limit: int) -> list:  # type: ignore[type-arg]
        return self.vms

    def stats(self, vm_id: str, tolerant: bool = False) -> VMStats:
        self.cpu += 0.5
        return stats(cpu_time_s=self.cpu, qemu_rss_mib=100.0)


class FakeAgent:
    def host_info(self):  # type: ignore[no-untyped-def]
        raise OSError("no host here")


def test_the_history_is_bounded_and_forgets_deleted_vms() -> None:
    from virtpool.control import usage_history as uh

    clock = [1000.0]
    vms = FakeVMs()
    recorder = uh.UsageRecorder(vms, FakeAgent(), clock=lambda: clock[0])  # type: ignore[arg-type]
    rounds = int(uh.RETENTION_S / uh.INTERVAL_S) * 2
    for _ in range(rounds):
        recorder.sample()
        clock[0] += uh.INTERVAL_S
    history = recorder.history(vms.vms[0])
    # Two hours of samples, one hour kept.
    assert len(history.points) <= uh.RETENTION_S / uh.INTERVAL_S + 1
    assert history.points[0].t >= clock[0] - uh.RETENTION_S - uh.INTERVAL_S
    assert [u.host for u in recorder.host_use()] == ["h1"]
    assert recorder.host_use()[0].memory_used_mib == 200.0
    del vms.vms[0]
    recorder.sample()
    assert recorder.history(FakeVMs().vms[0]).points == []
    assert [e.vm.name for e in recorder.latest()] == ["vm1"]
