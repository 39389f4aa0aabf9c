#!/usr/bin/env python3
"""API benchmark: read latency and throughput of the control plane with 10,000 VM records
(issue 3, item 10; issue 13, item 2).

For each backend (SQLite in a data dir; a throwaway PostgreSQL server):

* 10,000 VM records are written through the store layer (the same table definitions the
  services use; no QEMU, no disks: this measures the control plane, not the hosts);
* a real ``virtpool server`` process (control plane only) serves them;
* this process, a second one, sends ≥ 1,000 requests each of ``GET /api/v1/vms?limit=100``
  (pages as the next links give them, from a cursor anywhere in the 10,000 records) and
  ``GET /api/v1/vms/{name}`` (random names) over one keep-alive connection, and times each
  request end to end; offset pages (``&offset=…``, up to 9,900 rows in) are shown beside them;
* throughput: ``CLIENTS`` (32) concurrent keep-alive connections sending ``GET /vms/{name}``
  (random names) for ``--seconds``, counted in GETs per second, and the same for the baseline
  endpoint. The load generator is asyncio over raw sockets (a request is a write and a read of
  Content-Length bytes), so that it costs a small fraction of the server's CPU; its own CPU
  time per request is reported beside the figures (``client_cpu_us_per_request``);
* baselines in the same run: ``GET /api/v1/operations?limit=1`` (a trivial authenticated
  endpoint: token check, one query on an empty table, serialisation), and the raw database time
  of the same page and the same lookup through SQLAlchemy in this process.

The machine's load average is recorded with the figures (``load_avg``): on a shared machine the
ratios to the baseline say more than the milliseconds.

Usage: ``bench/api.py [--vms 10000] [--requests 1000] [--seconds 10] [--backend sqlite|postgresql|both]``.
A table goes to stdout, then one JSON line per backend; the last line is the backend with the
worse list p99: ``{"name": "api", "list_p99_ms": …, "get_p99_ms": …, "get_32_per_s": …, …}``.
Targets (issue 13): list p99 ≤ 15 ms, get p99 ≤ 5 ms, ≥ 1,000 GETs/s with 32 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
from sqlalchemy import select, text, tuple_
from sqlalchemy.orm import Session

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from tests.postgres import postgres_server
from virtpool.control.store import db
from virtpool.control.store.tables import VMRow

VIRTPOOL = str(Path(sys.executable).parent / "virtpool")
PAGE = 100
CLIENTS = 32
TARGETS = {"list_p99_ms": 15.0, "get_p99_ms": 5.0, "get_32_per_s": 1000.0}
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(samples) * 1000, 3),
            "p99_ms": round(percentile(samples, 99) * 1000, 3)}


def seed_vms(url: str, count: int) -> list[tuple[str, str]]:
    """Write ``count`` stopped VMs in the default project; return their (name, id)s."""
    engine = db.open_database(url)
    vms = [(f"vm-{i:05d}", uuid.uuid4().hex) for i in range(count)]
    with Session(engine) as session, session.begin():
        session.add_all(
            VMRow(id=vm_id, name=name, image="default", cpus=1 + i % 4, memory_mib=256,
                  disk_mib=1024, kernel_args="", accel="auto", max_memory_mib=256, cpu_weight=100,
                  slot=i, state="stopped", host="bench-host")
            for i, (name, vm_id) in enumerate(vms))
    with engine.begin() as connection:
        # Fresh statistics, as autovacuum (PostgreSQL) would gather shortly after a bulk load.
        connection.execute(text("ANALYZE"))
    engine.dispose()
    return vms


@contextmanager
def control_plane(data_dir: Path, url: str) -> Iterator[tuple[str, str, psutil.Process]]:
    """A real `virtpool server` on ``url``; yields its base URL, admin token and process."""
    url_file = data_dir / "api.url"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with (data_dir.parent / "server.log").open("wb") as out:
        proc = subprocess.Popen([VIRTPOOL, "server", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
                                 "--db", url], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not url_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((data_dir.parent / "server.log").read_text())
            time.sleep(0.05)
        yield (url_file.read_text().strip(), (data_dir / "admin.token").read_text().strip(),
               psutil.Process(proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def timed(client: httpx.Client, paths: list[str]) -> list[float]:
    samples = []
    for path in paths:
        began = time.perf_counter()
        response = client.get(path)
        elapsed = time.perf_counter() - began
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:200]}")
        response.json()
        samples.append(elapsed)
    return samples


async def _client(host: str, port: int, token: str, paths: list[str], until: float,
                  latencies: list[float]) -> int:
    """One keep-alive connection sending ``paths`` round and round until ``until``."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    requests = [(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
                 ).encode() for path in paths]
    done = 0
    try:
        while time.perf_counter() < until:
            began = time.perf_counter()
            writer.write(requests[done % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = CONTENT_LENGTH.search(head)
            body = await reader.readexactly(int(length[1]) if length else 0)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{paths[done % len(paths)]}: {head[:40]!r} {body[:200]!r}")
            latencies.append(time.perf_counter() - began)
            done += 1
    finally:
        writer.close()
    return done


def throughput(base: str, token: str, server: psutil.Process, paths: list[str],
               seconds: float) -> dict[str, float]:
    """GETs per second over ``CLIENTS`` concurrent connections, each taking its turn through
    ``paths``; with the latency under that load, and the CPU time per request of the server
    and of the load generator (which, unlike the rates, hardly depend on the machine's load)."""
    url = urlsplit(base)
    prefix = url.path.rstrip("/") + "/api/v1"
    full = [prefix + p for p in paths]
    # Each client starts at its own place in the list, so that they do not ask in lockstep.
    share = [full[i * len(full) // CLIENTS:] + full[:i * len(full) // CLIENTS] for i in range(CLIENTS)]
    latencies: list[float] = []

    async def run() -> int:
        until = time.perf_counter() + seconds
        counts = await asyncio.gather(*(_client(url.hostname or "127.0.0.1", url.port or 80, token,
                                                mine, until, latencies) for mine in share))
        return sum(counts)

    def server_cpu() -> float:
        times = server.cpu_times()
        return times.user + times.system

    cpu, serving, began = time.process_time(), server_cpu(), time.perf_counter()
    done = asyncio.run(run())
    elapsed, cpu, serving = (time.perf_counter() - began, time.process_time() - cpu,
                             server_cpu() - serving)
    return {"per_s": round(done / elapsed, 1), "requests": done, **summary(latencies),
            "server_cpu_us_per_request": round(serving / done * 1e6, 1),
            "client_cpu_us_per_request": round(cpu / done * 1e6, 1)}


def raw_db(url: str, cursors: list[tuple[str, str]], lookups: list[str]) -> dict[str, list[float]]:
    """The same page and lookup queries straight through SQLAlchemy (ORM rows, ports loaded)."""
    engine = db.open_database(url)

    def run(query: Callable[[Session, int], object], count: int) -> list[float]:
        samples = []
        for i in range(count):
            began = time.perf_counter()
            with Session(engine) as session:
                query(session, i)
            samples.append(time.perf_counter() - began)
        return samples

    result = {
        "list": run(lambda s, i: s.scalars(
            select(VMRow).where(tuple_(VMRow.name, VMRow.id) > tuple_(*cursors[i]))
            .order_by(VMRow.name, VMRow.id).limit(PAGE)).all(), len(cursors)),
        "get": run(lambda s, i: s.scalar(
            select(VMRow).where((VMRow.name == lookups[i]) | (VMRow.id == lookups[i]))), len(lookups)),
    }
    engine.dispose()
    return result


def measure(backend: str, url: str, data_dir: Path, vms: int, requests: int, seconds: float,
            rng: random.Random) -> dict[str, object]:
    log(f"[{backend}] writing {vms} VM records")
    records = sorted(seed_vms(url, vms))
    # Pages as a client reads them along the next links: a cursor (name:id) anywhere in the list.
    cursors = [records[rng.randrange(0, vms - PAGE)] for _ in range(requests)]
    offsets = [rng.randrange(0, vms // PAGE) * PAGE for _ in range(requests)]
    lookups = [rng.choice(records)[0] for _ in range(requests)]
    list_paths = [f"/vms?limit={PAGE}&after={name}:{vm_id}" for name, vm_id in cursors]
    with control_plane(data_dir, url) as (base, token, server), httpx.Client(
            base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        first = client.get("/vms", params={"limit": PAGE})
        assert first.headers["x-total-count"] == str(vms) and len(first.json()) == PAGE
        assert len(client.get(list_paths[0]).json()) == PAGE
        log(f"[{backend}] warming up, then {requests} requests of each kind")
        timed(client, list_paths[:50] + [f"/vms/{n}" for n in lookups[:50]])
        baseline = timed(client, ["/operations?limit=1"] * requests)
        listing = timed(client, list_paths)
        getting = timed(client, [f"/vms/{n}" for n in lookups])
        by_offset = timed(client, [f"/vms?limit={PAGE}&offset={o}" for o in offsets])
        log(f"[{backend}] {CLIENTS} clients, {seconds:g} s each: baseline, then GET one VM")
        base_32 = throughput(base, token, server, ["/operations?limit=1"], seconds)
        get_32 = throughput(base, token, server, [f"/vms/{n}" for n in lookups], seconds)
    raw = raw_db(url, cursors, lookups)
    return {
        "backend": backend, "vms": vms, "requests": requests, "load_avg": os.getloadavg(),
        "get_32": get_32, "baseline_32": base_32,
        "list": summary(listing), "get": summary(getting), "baseline": summary(baseline),
        "offset_list": summary(by_offset), "raw_list": summary(raw["list"]), "raw_get": summary(raw["get"]),
    }


def table(results: list[dict[str, object]]) -> str:
    rows = [("backend", "measure", "p50 ms", "p99 ms", "p99 / baseline p99")]
    for r in results:
        base = r["baseline"]["p99_ms"]  # type: ignore[index]
        for key, label in (("list", f"GET /vms?limit={PAGE}&after=…"), ("get", "GET /vms/{name}"),
                           ("offset_list", f"GET /vms?limit={PAGE}&offset=…"),
                           ("baseline", "baseline: GET /operations?limit=1"),
                           ("raw_list", "raw DB: page of 100"), ("raw_get", "raw DB: one VM")):
            s = r[key]  # type: ignore[index]
            rows.append((str(r["backend"]), label, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}",
                         f"{s['p99_ms'] / base:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    for r in results:
        g, b = r["get_32"], r["baseline_32"]  # type: ignore[index]
        lines.append(f"{r['backend']}: {CLIENTS} clients: GET /vms/{{name}} {g['per_s']:,.0f}/s "
                     f"(p99 {g['p99_ms']:.1f} ms), baseline {b['per_s']:,.0f}/s, ratio "
                     f"{g['per_s'] / b['per_s']:.2f}; CPU per GET: server {g['server_cpu_us_per_request']:.0f} µs "
                     f"(baseline {b['server_cpu_us_per_request']:.0f}), load generator "
                     f"{g['client_cpu_us_per_request']:.0f} µs; load average {' '.join(f'{x:.2f}' for x in r['load_avg'])}")  # type: ignore[union-attr]
    return "\n".join(lines)


def line(result: dict[str, object]) -> str:
    listing, getting, base = result["list"], result["get"], result["baseline"]
    return json.dumps({
        "name": "api", "backend": result["backend"],
        "list_p99_ms": listing["p99_ms"], "get_p99_ms": getting["p99_ms"],  # type: ignore[index]
        "list_p50_ms": listing["p50_ms"], "get_p50_ms": getting["p50_ms"],  # type: ignore[index]
        "baseline_p99_ms": base["p99_ms"],  # type: ignore[index]
        "list_ratio": round(listing["p99_ms"] / base["p99_ms"], 2),  # type: ignore[index]
        "get_ratio": round(getting["p99_ms"] / base["p99_ms"], 2),  # type: ignore[index]
        "offset_list_p99_ms": result["offset_list"]["p99_ms"],  # type: ignore[index]
        "raw_list_p99_ms": result["raw_list"]["p99_ms"], "raw_get_p99_ms": result["raw_get"]["p99_ms"],  # type: ignore[index]
        "get_32_per_s": result["get_32"]["per_s"], "baseline_32_per_s": result["baseline_32"]["per_s"],  # type: ignore[index]
        "get_32_ratio": round(result["get_32"]["per_s"] / result["baseline_32"]["per_s"], 2),  # type: ignore[index]
        "get_32_p99_ms": result["get_32"]["p99_ms"],  # type: ignore[index]
        "server_cpu_us_per_get": result["get_32"]["server_cpu_us_per_request"],  # type: ignore[index]
        "server_cpu_us_per_baseline": result["baseline_32"]["server_cpu_us_per_request"],  # type: ignore[index]
        "client_cpu_us_per_request": result["get_32"]["client_cpu_us_per_request"],  # type: ignore[index]
        "vms": result["vms"], "requests": result["requests"], "clients": CLIENTS,
        "load_avg": [round(x, 2) for x in result["load_avg"]],  # type: ignore[attr-defined]
        "meets_targets": (listing["p99_ms"] <= TARGETS["list_p99_ms"]  # type: ignore[index]
                          and getting["p99_ms"] <= TARGETS["get_p99_ms"]  # type: ignore[index]
                          and result["get_32"]["per_s"] >= TARGETS["get_32_per_s"]),  # type: ignore[index]
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="of each throughput run")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="virtpool-bench-api-") as tmp:
        root = Path(tmp)
        if args.backend in ("sqlite", "both"):
            data_dir = root / "sqlite" / "data"
            data_dir.mkdir(parents=True, mode=0o700)
            results.append(measure("sqlite", db.sqlite_url(data_dir / "state.db"), data_dir,
                                   args.vms, args.requests, args.seconds, rng))
        if args.backend in ("postgresql", "both"):
            data_dir = root / "postgresql" / "data"
            data_dir.mkdir(parents=True, mode=0o700)
            with postgres_server() as url:
                results.append(measure("postgresql", url, data_dir, args.vms, args.requests,
                                       args.seconds, rng))
    print(table(results))
    results.sort(key=lambda r: r["list"]["p99_ms"])  # type: ignore[index]
    for result in results:  # the worse backend last
        print(line(result), flush=True)


if __name__ == "__main__":
    main()
