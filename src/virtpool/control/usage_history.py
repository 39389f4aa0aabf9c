"""The usage history: a background loop samples every active VM's figures from its agent and
keeps the last hour of points per VM in memory, for the dashboard's graphs and for /metrics.

Bounded by construction: one ring of at most ``RETENTION_S / INTERVAL_S`` points per VM, and a
VM's ring is dropped once it is deleted or has had no sample for ``RETENTION_S``. The history is
not persisted: after a restart the graphs start empty again (the counters themselves live in the
guests' QEMU processes, so /metrics loses nothing a Prometheus rate() would need).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from virtpool.control.vms import VMService
from virtpool.model.agent import Agent
from virtpool.model.errors import VirtpoolError
from virtpool.model.states import ACTIVE
from virtpool.model.usage import HostUse, UsageHistory, UsagePoint, point_between
from virtpool.model.vm import VMInfo, VMStats

log = logging.getLogger(__name__)

INTERVAL_S = 5.0  # "updated every few seconds" on the dashboard
RETENTION_S = 3600.0  # the graphs' last hour
MAX_VMS_LISTED = 100_000


@dataclass
class Sampled:
    """The last sample of one VM, and its ring of points."""

    vm: VMInfo
    stats: VMStats
    t: float
    points: deque[UsagePoint] = field(default_factory=lambda: deque(maxlen=int(RETENTION_S / INTERVAL_S) + 1))


class UsageRecorder:
    """Samples, keeps and answers the usage history. Thread-safe."""

    def __init__(self, vms: VMService, agent: Agent, *, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._vms = vms
        self._agent = agent
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._by_id: dict[str, Sampled] = {}
        self._disk_used_mib: float | None = None
        self._sampled_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="usage-recorder", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad round; logged
                log.exception("usage sampling failed; trying again in %.0f s", self.interval_s)

    def sample(self) -> int:
        """One round: every active VM on this host; returns how many were sampled."""
        vms = self._vms.list(limit=MAX_VMS_LISTED)
        sampled: list[tuple[VMInfo, VMStats, float]] = []
        for vm in vms:
            if vm.state not in ACTIVE or vm.host != self._vms.local_host:
                continue
            try:
                stats = self._vms.stats(vm.id, tolerant=True)
            except VirtpoolError:  # deleted meanwhile
                continue
            sampled.append((vm, stats, self._clock()))
        try:
            info = self._agent.host_info()
            disk_used: float | None = info.disk_total_mib - info.disk_free_mib
        except (VirtpoolError, OSError):
            disk_used = None
        now = self._clock()
        known = {vm.id for vm in vms}
        with self._lock:
            for vm, stats, t in sampled:
                entry = self._by_id.get(vm.id)
                if entry is None:
                    entry = self._by_id[vm.id] = Sampled(vm, stats, t)
                    entry.points.append(point_between(None, t, stats, t))
                    continue
                entry.points.append(point_between(entry.stats, entry.t, stats, t))
                entry.vm, entry.stats, entry.t = vm, stats, t
            for vm_id in [i for i, e in self._by_id.items() if i not in known or now - e.t > RETENTION_S]:
                del self._by_id[vm_id]
            self._disk_used_mib, self._sampled_at = disk_used, now
        return len(sampled)

    def history(self, vm: VMInfo, since: float = 0.0) -> UsageHistory:
        """The points of ``vm`` after ``since`` (epoch seconds) within the retention."""
        cutoff = max(since, self._clock() - RETENTION_S)
        with self._lock:
            entry = self._by_id.get(vm.id)
            points = [p for p in entry.points if p.t > cutoff] if entry else []
        return UsageHistory(vm=vm.name, interval_s=self.interval_s, retention_s=RETENTION_S,
                            points=points)

    def latest(self, project_id: str | None = None) -> list[Sampled]:
        """The last sample of each VM that was active in the last round (one project's, or all)."""
        with self._lock:
            at = self._sampled_at
            return [e for e in self._by_id.values()
                    if (project_id is None or e.vm.project == project_id)
                    and at is not None and e.t >= at - 2 * self.interval_s]

    def host_use(self, project_id: str | None = None) -> list[HostUse]:
        """Per host, what the active VMs use (one project's VMs for a project's view)."""
        hosts: dict[str, HostUse] = {}
        for entry in self.latest(project_id):
            host = entry.vm.host
            use = hosts.setdefault(host, HostUse(host=host, cpu_used=0.0, memory_used_mib=0.0,
                                                 sampled_at=self._sampled_at))
            use.cpu_used = round(use.cpu_used + (entry.points[-1].cpu_percent or 0.0) / 100, 2)
            use.memory_used_mib = round(use.memory_used_mib + (entry.stats.qemu_rss_mib or 0.0), 1)
        local = self._vms.local_host
        if project_id is None:
            use = hosts.setdefault(local, HostUse(host=local, cpu_used=0.0, memory_used_mib=0.0,
                                                  sampled_at=self._sampled_at))
            use.disk_used_mib = self._disk_used_mib
        return list(hosts.values())
