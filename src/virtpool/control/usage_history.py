"""The usage history: every few seconds the leader samples every active VM's figures from its
host's agent (the in-process one or a remote one) and stores them in the database, for the
dashboard's graphs and for /metrics.

In the database, not in memory, so that the last hour is still there after a restart, and so
that every server sharing the pool answers the same (an agentless `virtpool server` included):
only the leader samples (one loop of the pool's), any server reads.

Bounded by construction: a sample is one row per VM per round, and the sweep at each round
deletes rows older than ``RETENTION_S`` and those of deleted VMs, so the table holds at most
about ``RETENTION_S / INTERVAL_S`` rows per VM that ran in the last hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.agents.registry import AgentRegistry
from virtpool.control.store.tables import HostSampleRow, UsageSampleRow, VMRow
from virtpool.control.vms import VMService
from virtpool.model.errors import VirtpoolError
from virtpool.model.states import ACTIVE
from virtpool.model.usage import HostUse, UsageHistory, UsagePoint, point_between
from virtpool.model.vm import VMInfo, VMUsage

log = logging.getLogger(__name__)

INTERVAL_S = 5.0  # "updated every few seconds" on the dashboard
RETENTION_S = 3600.0  # the graphs' last hour
SAMPLERS = 8  # agents asked at once: a round over remote hosts is not one call after another
_COUNTERS = tuple(VMUsage.model_fields)


@dataclass(frozen=True, slots=True)
class _Active:
    """What a sampling round needs of an active VM."""

    id: str
    host: str


@dataclass
class Sampled:
    """The last sample of one VM, with what names it in /metrics."""

    vm_id: str
    name: str
    project: str
    host: str
    stats: VMUsage
    t: float
    point: UsagePoint


class UsageRecorder:
    """Samples (on the leader), stores, sweeps and answers the usage history. Thread-safe."""

    def __init__(self, sessions: sessionmaker[Session], vms: VMService, agents: AgentRegistry, *,
                 interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.time) -> None:
        self._sessions = sessions
        self._vms = vms
        self._agents = agents
        self.interval_s = interval_s
        self._clock = clock
        # The previous sample per VM, for the rates; reloaded from the table whenever this
        # server was not the one sampling (a restart, or leadership that just came here).
        self._last: dict[str, tuple[float, VMUsage]] = {}
        self._last_round: float | None = None
        self._pool = ThreadPoolExecutor(max_workers=SAMPLERS, thread_name_prefix="usage")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- sampling (the leader) --------------------------------------------------------------

    def sample(self) -> int:
        """One round: every active VM on every host with an agent; returns how many were stored."""
        attached = set(self._agents.attached())
        vms = self._active_on(attached)
        stats = list(self._pool.map(self._stats_of, vms))
        hosts = list(self._pool.map(self._disk_used, sorted({vm.host for vm in vms} | (attached & {self._vms.local_host}))))
        now = self._clock()
        if self._last_round is None or now - self._last_round > 3 * self.interval_s:
            self._last = self._load_last()
        self._last_round = now
        rows: list[dict[str, Any]] = []
        for vm, sample in zip(vms, stats):
            if sample is None:
                continue
            usage, t = sample
            before = self._last.get(vm.id)
            point = point_between(before[1] if before else None, before[0] if before else t, usage, t)
            rows.append({"vm_id": vm.id, "t": t, "host": vm.host,
                         "counters": usage.model_dump(exclude_none=True),
                         "point": point.model_dump(exclude={"t"}, exclude_none=True)})
            self._last[vm.id] = (t, usage)
        live = {vm.id for vm in vms}
        self._last = {vm_id: last for vm_id, last in self._last.items() if vm_id in live}
        with self._sessions.begin() as session:
            if rows:
                session.execute(insert(UsageSampleRow), rows)
            for host, used in hosts:
                row = session.get(HostSampleRow, host)
                if row is None:
                    session.add(HostSampleRow(host=host, t=now, disk_used_mib=used))
                else:
                    row.t, row.disk_used_mib = now, used
            self._sweep(session, now)
        return len(rows)

    def _active_on(self, hosts: set[str]) -> list[_Active]:
        """The active VMs on ``hosts``: two columns of the rows the round samples, not every VM
        of the pool as API objects (with 10,000 stopped VMs, building those every round took
        more CPU than the API's reads together)."""
        if not hosts:
            return []
        with self._sessions() as session:
            return [_Active(vm_id, host) for vm_id, host in session.execute(
                select(VMRow.id, VMRow.host).where(VMRow.state.in_([s.value for s in ACTIVE]),
                                                   VMRow.host.in_(sorted(hosts))))]

    def _stats_of(self, vm: _Active) -> tuple[VMUsage, float] | None:
        try:
            stats = self._vms.stats(vm.id)
        except VirtpoolError:  # deleted meanwhile, or its host cannot answer: no sample
            return None
        return VMUsage.model_validate(stats.model_dump(include=set(_COUNTERS))), self._clock()

    def _disk_used(self, host: str) -> tuple[str, float | None]:
        try:
            info = self._agents.for_host(host).host_info()
        except (VirtpoolError, OSError):
            return host, None
        return host, info.disk_total_mib - info.disk_free_mib

    def _load_last(self) -> dict[str, tuple[float, VMUsage]]:
        """Each VM's newest stored sample within the retention."""
        cutoff = self._clock() - RETENTION_S
        with self._sessions() as session:
            newest = (select(UsageSampleRow.vm_id, func.max(UsageSampleRow.t).label("t"))
                      .where(UsageSampleRow.t > cutoff).group_by(UsageSampleRow.vm_id).subquery())
            rows = session.execute(select(UsageSampleRow.vm_id, UsageSampleRow.t, UsageSampleRow.counters)
                                   .join(newest, (UsageSampleRow.vm_id == newest.c.vm_id)
                                         & (UsageSampleRow.t == newest.c.t)))
            return {vm_id: (t, VMUsage.model_validate(counters)) for vm_id, t, counters in rows}

    @staticmethod
    def _sweep(session: Session, now: float) -> None:
        """Rows past the retention, and those of VMs that are gone."""
        session.execute(delete(UsageSampleRow).where(UsageSampleRow.t <= now - RETENTION_S))
        session.execute(delete(UsageSampleRow).where(UsageSampleRow.vm_id.not_in(select(VMRow.id))))
        session.execute(delete(HostSampleRow).where(HostSampleRow.t <= now - RETENTION_S))

    # -- reading (any server) ---------------------------------------------------------------

    def history(self, vm: VMInfo, since: float = 0.0) -> UsageHistory:
        """The points of ``vm`` after ``since`` (epoch seconds) within the retention."""
        cutoff = max(since, self._clock() - RETENTION_S)
        with self._sessions() as session:
            rows = session.execute(select(UsageSampleRow.t, UsageSampleRow.point)
                                   .where(UsageSampleRow.vm_id == vm.id, UsageSampleRow.t > cutoff)
                                   .order_by(UsageSampleRow.t))
            points = [UsagePoint(t=t, **point) for t, point in rows]
        return UsageHistory(vm=vm.name, interval_s=self.interval_s, retention_s=RETENTION_S,
                            points=points)

    def latest(self, project_id: str | None = None) -> list[Sampled]:
        """The last sample of each VM sampled in the last rounds (one project's, or all), with
        its VM's current name, project and host."""
        cutoff = self._clock() - 2.5 * self.interval_s
        query = (select(UsageSampleRow.vm_id, UsageSampleRow.t, UsageSampleRow.counters,
                        UsageSampleRow.point, VMRow.name, VMRow.project_id, VMRow.host)
                 .join(VMRow, VMRow.id == UsageSampleRow.vm_id)
                 .where(UsageSampleRow.t > cutoff).order_by(UsageSampleRow.t))
        if project_id is not None:
            query = query.where(VMRow.project_id == project_id)
        newest: dict[str, Sampled] = {}
        with self._sessions() as session:
            for vm_id, t, counters, point, name, project, host in session.execute(query):
                newest[vm_id] = Sampled(vm_id, name, project, host or "", VMUsage.model_validate(counters),
                                        t, UsagePoint(t=t, **point))
        return list(newest.values())

    def host_use(self, project_id: str | None = None) -> list[HostUse]:
        """Per host, what the active VMs use (one project's VMs for a project's view); the
        host's disk use only in the pool-wide view (it counts every project)."""
        hosts: dict[str, HostUse] = {}
        for entry in self.latest(project_id):
            use = hosts.setdefault(entry.host, HostUse(host=entry.host, cpu_used=0.0, memory_used_mib=0.0,
                                                       sampled_at=entry.t))
            use.cpu_used = round(use.cpu_used + (entry.point.cpu_percent or 0.0) / 100, 2)
            use.memory_used_mib = round(use.memory_used_mib + (entry.stats.qemu_rss_mib or 0.0), 1)
            use.sampled_at = max(use.sampled_at or 0.0, entry.t)
        if project_id is None:
            with self._sessions() as session:
                for row in session.scalars(select(HostSampleRow).where(
                        HostSampleRow.t > self._clock() - 2.5 * self.interval_s)):
                    use = hosts.setdefault(row.host, HostUse(host=row.host, cpu_used=0.0,
                                                             memory_used_mib=0.0, sampled_at=row.t))
                    use.disk_used_mib = row.disk_used_mib
        return list(hosts.values())

