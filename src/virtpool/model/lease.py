"""Host leases: how often agents heartbeat, how long a lease lasts, what a heartbeat carries.

A host is alive while its lease (an epoch and an expiry, a narrow row apart from its usage
figures, as Kubernetes' node leases are) keeps being renewed. The heartbeat interval grows with
the pool's size so that the control plane's database sees at most ``MAX_HEARTBEATS_PER_S``
renewals a second, as Nomad caps them with ``max_heartbeats_per_second``; the lease outlives
one interval by a grace of at least ``MIN_GRACE_S``, so that one late heartbeat does not make a
host unreachable. These are pure functions: the agent and the control plane compute the same.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

DEFAULT_INTERVAL_S = 5.0  # the default heartbeat period for a small pool
# What one PostgreSQL on a small control-plane machine renews comfortably while it serves the
# API (bench/heartbeats.py measures it); at 10,000 hosts this gives a 25 s interval.
MAX_HEARTBEATS_PER_S = 400.0
MIN_GRACE_S = 10.0  # a heartbeat may be this late (a busy agent, a slow network) and still count
# The lease monitor looks for lapsed leases this often: a dead host is noticed within
# lease_duration(...) + this.
MONITOR_PERIOD_S = 1.0


def heartbeat_interval(hosts: int, *, max_per_s: float = MAX_HEARTBEATS_PER_S,
                       minimum_s: float = DEFAULT_INTERVAL_S) -> float:
    """Seconds between one agent's heartbeats in a pool of ``hosts`` hosts: ``minimum_s``, or
    longer once the pool is big enough that all of them together would exceed ``max_per_s``."""
    if hosts < 0 or max_per_s <= 0 or minimum_s <= 0:
        raise ValueError("hosts must be >= 0, max_per_s and minimum_s > 0")
    return max(minimum_s, hosts / max_per_s)


def lease_duration(interval_s: float) -> float:
    """How long a renewal keeps a host alive: one interval plus a grace as long as the
    interval (never under MIN_GRACE_S), so a host survives one lost heartbeat."""
    return interval_s + max(MIN_GRACE_S, interval_s)


def detection_bound(hosts: int) -> float:
    """The longest a dead host of a pool of ``hosts`` stays `up`: its lease, then one look."""
    return lease_duration(heartbeat_interval(hosts)) + MONITOR_PERIOD_S


class HostUsageReport(BaseModel):
    """What a heartbeat reports about its host, stored apart from the lease."""

    running_vms: int = Field(ge=0)
    memory_used_mib: int = Field(ge=0)
    cpu_load_pct: float = Field(ge=0)
    disk_free_mib: int = Field(ge=0)


class LeaseGrant(BaseModel):
    """The reply to an acquire or a renewal: hold ``epoch`` and heartbeat every ``interval_s``."""

    host: str
    epoch: int
    expires_at: datetime
    interval_s: float
    lease_s: float
