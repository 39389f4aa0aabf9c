"""What VMs and hosts used over time, as the control plane samples it: pure data and arithmetic.

A sample holds the agent's cumulative counters (``VMUsage``); a point of the history is the
difference of two consecutive samples turned into rates, so that the dashboard and the API never
have to know which figures are counters.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from virtpool.model.vm import VMUsage


class UsagePoint(BaseModel):
    """A VM's use over one sampling interval ending at ``t``. ``None``: the host cannot tell."""

    t: float = Field(description="end of the interval, seconds since the epoch")
    cpu_percent: float | None = Field(default=None, description="of one host CPU")
    memory_mib: float | None = Field(default=None, description="guest memory in use (total - free), "
                                     "else what the balloon leaves it")
    rss_mib: float | None = Field(default=None, description="the QEMU process's resident memory")
    disk_read_bps: float | None = None
    disk_write_bps: float | None = None
    disk_read_iops: float | None = None
    disk_write_iops: float | None = None
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None
    net_rx_pps: float | None = None
    net_tx_pps: float | None = None


class UsageHistory(BaseModel):
    """A VM's points, oldest first, over at most ``retention_s``."""

    vm: str
    interval_s: float
    retention_s: float
    points: list[UsagePoint]


class HostUse(BaseModel):
    """What a host's VMs use right now (from the last samples), next to what they were given."""

    host: str
    cpu_used: float = Field(description="host CPUs busy running the VMs")
    memory_used_mib: float = Field(description="resident memory of the VMs' QEMU processes")
    disk_used_mib: float | None = Field(default=None, description="space used on the host's data "
                                        "disk (pool admins only: it counts every project)")
    sampled_at: float | None


def _rate(now: int | float | None, then: int | float | None, seconds: float) -> float | None:
    # A counter that went backwards was reset (the VM restarted): no rate for that interval.
    if now is None or then is None or now < then:
        return None
    return round((now - then) / seconds, 3)


def guest_memory_mib(stats: VMUsage) -> float | None:
    if stats.guest_total_mib is not None and stats.guest_free_mib is not None:
        return round(stats.guest_total_mib - stats.guest_free_mib, 1)
    return stats.balloon_mib


def point_between(before: VMUsage | None, before_t: float, now: VMUsage, now_t: float) -> UsagePoint:
    """The point for the interval (``before_t``, ``now_t``]; rates need a previous sample."""
    seconds = now_t - before_t
    point = UsagePoint(t=now_t, cpu_percent=now.cpu_percent, memory_mib=guest_memory_mib(now),
                       rss_mib=now.qemu_rss_mib)
    if before is None or seconds <= 0:
        return point
    # From the CPU-time counter over exactly this interval; the agent's own figure (over its
    # last interval, whatever that was) only when the counter is missing.
    cpu = _rate(now.cpu_time_s, before.cpu_time_s, seconds)
    if cpu is not None:
        point.cpu_percent = round(100 * cpu, 1)
    point.disk_read_bps = _rate(now.disk_read_bytes, before.disk_read_bytes, seconds)
    point.disk_write_bps = _rate(now.disk_written_bytes, before.disk_written_bytes, seconds)
    point.disk_read_iops = _rate(now.disk_read_ops, before.disk_read_ops, seconds)
    point.disk_write_iops = _rate(now.disk_write_ops, before.disk_write_ops, seconds)
    point.net_rx_bps = _rate(now.net_rx_bytes, before.net_rx_bytes, seconds)
    point.net_tx_bps = _rate(now.net_tx_bytes, before.net_tx_bytes, seconds)
    point.net_rx_pps = _rate(now.net_rx_packets, before.net_rx_packets, seconds)
    point.net_tx_pps = _rate(now.net_tx_packets, before.net_tx_packets, seconds)
    return point
