#!/usr/bin/env python3
"""Host leases at pool scale: a control plane on PostgreSQL keeps 10,000 simulated hosts'
leases alive while it serves API reads.

A real `virtpool server` runs on a throwaway PostgreSQL and leads the background loops (its
lease monitor marks lapsed hosts unreachable). This process plays the hosts: each renews its
lease every ``heartbeat_interval(hosts)`` seconds (25 s at 10,000 hosts, so 400 renewals a
second), spread evenly, through ``LeaseService.renew`` on the same database — the work the
agents' heartbeat endpoint does per heartbeat. Meanwhile API GETs (a host, a page of hosts'
VMs) are timed against the server; the baseline is the same GETs before the heartbeats start,
in the same run. After the leases have lived longer than one lease period, one host stops
renewing: ``detect_s`` is how long the server took to call it unreachable (the issue asks
for under 60 s). ``false_lapses`` counts every other host it called unreachable.

Usage: ``bench/heartbeats.py [--hosts 10000] [--seconds 90]``. The last line is JSON:
``{"name": "heartbeats", "hosts", "heartbeats_per_s", "heartbeat_p99_ms", "false_lapses",
"detect_s", "api_p99_ratio"}`` (plus the raw p99s).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import Engine, func, insert, select, text, update

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from api import control_plane, percentile  # noqa: E402  (bench/api.py: the same server, same p99)

from tests.postgres import postgres_server  # noqa: E402
from virtpool.control.audit import AuditLog  # noqa: E402
from virtpool.control.events import EventLog  # noqa: E402
from virtpool.control.leases import LeaseService, StaleLease  # noqa: E402
from virtpool.control.store import db  # noqa: E402
from virtpool.control.store.tables import EventRow, HostLeaseRow, HostRow, utcnow  # noqa: E402
from virtpool.model.lease import (  # noqa: E402
    MIN_GRACE_S,
    MONITOR_PERIOD_S,
    heartbeat_interval,
    lease_duration,
)

RENEWERS = 8  # threads renewing leases: as many database connections as the endpoint would use
READERS = 2  # API clients in a closed loop
READ_PAUSE_S = 0.02  # between one reader's requests: a steady load, not a flood


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def seed_hosts(url: str, count: int) -> list[str]:
    """``count`` host rows and their first leases (epoch 1), in bulk."""
    engine = db.open_database(url)
    names = [f"sim-{i:05d}" for i in range(count)]
    now = utcnow()
    lease_s = lease_duration(heartbeat_interval(count))
    with engine.begin() as connection:
        connection.execute(insert(HostRow), [
            {"name": n, "cpus": 64, "memory_mib": 262144, "disk_mib": 4_000_000, "labels": {},
             "state": "up", "accel": "kvm", "generation": 0, "address": f"https://{n}:8471",
             "agent_version": "bench", "updated_at": now, "cpu_ratio": 4.0, "memory_ratio": 1.0,
             "disk_ratio": 1.0, "balloon": False, "reserved_cpus": 0, "reserved_memory_mib": 0,
             "reserved_disk_mib": 0, "used_cpus": 0, "used_memory_mib": 0, "used_disk_mib": 0}
            for n in names])
        # Expiries spread over the first interval, as the hosts' heartbeats will be.
        connection.execute(insert(HostLeaseRow), [
            {"host": n, "epoch": 1, "renewed_at": now, "lapsed": False,
             "expires_at": now + timedelta(seconds=lease_s * (1 + i / count))}
            for i, n in enumerate(names)])
        connection.execute(text("ANALYZE"))
    engine.dispose()
    return names


class Readers:
    """API GETs in a closed loop; ``samples`` holds their latencies while ``recording``."""

    def __init__(self, base: str, token: str, hosts: list[str]) -> None:
        self._base, self._token, self._hosts = base, token, hosts
        self.samples: list[float] = []
        self.recording = False
        self.errors = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(READERS)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=f"{self._base}/api/v1",
                          headers={"Authorization": f"Bearer {self._token}"}, timeout=30) as client:
            while not self._stop.is_set():
                path = (f"/hosts/{rng.choice(self._hosts)}" if rng.random() < 0.5
                        else "/vms?limit=50")
                began = time.perf_counter()
                response = client.get(path)
                elapsed = time.perf_counter() - began
                if response.status_code != 200:
                    self.errors += 1
                elif self.recording:
                    self.samples.append(elapsed)
                time.sleep(READ_PAUSE_S)

    def measure(self, seconds: float) -> list[float]:
        """The latencies of the reads of the next ``seconds``."""
        self.samples = []
        self.recording = True
        time.sleep(seconds)
        self.recording = False
        return list(self.samples)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


class Heartbeats:
    """Every host renews once per interval, at its own offset in it; one host can be killed."""

    def __init__(self, leases: LeaseService, hosts: list[str], interval_s: float) -> None:
        self._leases, self._hosts, self._interval = leases, hosts, interval_s
        self.latencies: list[float] = []
        self.done = 0
        self.late = 0  # renewals that started after their host's slot had already passed by 1 s
        self.dead: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread.start()

    def _renew(self, host: str, due: float) -> None:
        if time.monotonic() - due > 1.0:
            self.late += 1
        began = time.perf_counter()
        try:
            self._leases.renew(host, 1)
        except StaleLease:
            return
        self.latencies.append(time.perf_counter() - began)
        self.done += 1

    def _run(self) -> None:
        n, step = len(self._hosts), self._interval / len(self._hosts)
        with ThreadPoolExecutor(max_workers=RENEWERS) as pool:
            k = 0
            while not self._stop.is_set():
                due = self._began + k * step
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                host = self._hosts[k % n]
                if host != self.dead:
                    pool.submit(self._renew, host, due)
                k += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def lapsed_hosts(engine: Engine, since_id: int) -> list[str]:
    """Hosts the server's lease monitor called unreachable since event ``since_id``."""
    with engine.connect() as connection:
        rows = connection.scalars(select(EventRow.data).where(
            EventRow.kind == "host.unreachable", EventRow.id > since_id)).all()
    return [(data or {}).get("host", "?") for data in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=90.0,
                        help="how long heartbeats run before one host is killed")
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    args = parser.parse_args()
    interval = heartbeat_interval(args.hosts)
    lease_s = lease_duration(interval)
    log(f"{args.hosts} hosts: heartbeat every {interval:g} s ({args.hosts / interval:.0f}/s), "
        f"lease {lease_s:g} s, monitor every {MONITOR_PERIOD_S:g} s")
    with tempfile.TemporaryDirectory(prefix="virtpool-bench-hb-") as tmp, postgres_server() as url:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        hosts = seed_hosts(url, args.hosts)
        engine = db.open_database(url)
        sessions = db.session_factory(engine)
        leases = LeaseService(sessions, EventLog(sessions), AuditLog(sessions),
                              on_lost=lambda host: None, on_back=lambda host: None)
        with control_plane(data_dir, url) as (base, token, _server):
            readers = Readers(base, token, hosts)
            readers.start()
            time.sleep(2)  # connections warmed up
            with engine.connect() as connection:
                last_event = connection.scalar(select(func.coalesce(func.max(EventRow.id), 0)))
            # The baseline, in the same run: the same reads with no heartbeat at all, before the
            # heartbeats start and again once they stopped (before any lease can lapse). The
            # seeded leases are re-armed to outlive the first window and one interval.
            quiet_s = min(args.baseline_seconds, lease_s / 3)
            with engine.begin() as connection:
                connection.execute(update(HostLeaseRow).values(
                    expires_at=utcnow() + timedelta(seconds=lease_s + quiet_s + 5)))
            log("baseline: API reads alone")
            quiet = readers.measure(quiet_s)
            beats = Heartbeats(leases, hosts, interval)
            beats.start()
            log(f"load: API reads while {args.hosts / interval:.0f} heartbeats/s renew leases")
            load_began = time.monotonic()
            readers.samples, readers.recording = [], True
            time.sleep(args.seconds)
            beats.dead = hosts[len(hosts) // 2]
            killed_at = time.monotonic()
            log(f"host {beats.dead} stops heartbeating")
            detected = None
            deadline = killed_at + 3 * lease_s
            while detected is None and time.monotonic() < deadline:
                if beats.dead in lapsed_hosts(engine, last_event):
                    detected = time.monotonic() - killed_at
                time.sleep(0.2)
            readers.recording = False
            busy = list(readers.samples)
            elapsed = time.monotonic() - load_began
            beats.stop()
            false = [h for h in lapsed_hosts(engine, last_event) if h != beats.dead]
            log("baseline again: API reads alone")
            quiet += readers.measure(min(8.0, MIN_GRACE_S * 0.8))
            readers.stop()
        engine.dispose()
    quiet_p99, busy_p99 = percentile(quiet, 99) * 1000, percentile(busy, 99) * 1000
    result = {
        "name": "heartbeats", "hosts": args.hosts,
        "heartbeats_per_s": round(beats.done / elapsed, 1),
        "heartbeat_p99_ms": round(percentile(beats.latencies, 99) * 1000, 2),
        "false_lapses": len(false),
        "detect_s": round(detected, 1) if detected is not None else None,
        "api_p99_ratio": round(busy_p99 / quiet_p99, 2),
        "api_p99_ms_quiet": round(quiet_p99, 2), "api_p99_ms_load": round(busy_p99, 2),
        "interval_s": interval, "lease_s": lease_s, "late_heartbeats": beats.late,
        "api_errors": readers.errors,
    }
    log(f"API GET p99: {quiet_p99:.1f} ms quiet, {busy_p99:.1f} ms under heartbeats "
        f"(ratio {result['api_p99_ratio']}); heartbeat p99 {result['heartbeat_p99_ms']} ms; "
        f"dead host noticed after {result['detect_s']} s; false lapses {len(false)}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
