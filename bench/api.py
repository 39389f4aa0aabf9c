#!/usr/bin/env python3
"""API benchmark: read latency of the control plane with 10,000 VM records (issue 3, item 10).

For each backend (SQLite in a data dir; a throwaway PostgreSQL server):

* 10,000 VM records are written through the store layer (the same table definitions the
  services use; no QEMU, no disks: this measures the control plane, not the hosts);
* a real ``virtpool server`` process (control plane only) serves them;
* this process, a second one, sends ≥ 1,000 requests each of ``GET /api/v1/vms?limit=100``
  (pages as the next links give them, from a cursor anywhere in the 10,000 records) and
  ``GET /api/v1/vms/{name}`` (random names) over one keep-alive connection, and times each
  request end to end; offset pages (``&offset=…``, up to 9,900 rows in) are shown beside them;
* baselines in the same run: ``GET /api/v1/operations?limit=1`` (a trivial authenticated
  endpoint: token check, one query on an empty table, serialisation), and the raw database time
  of the same page and the same lookup through SQLAlchemy in this process.

Usage: ``bench/api.py [--vms 10000] [--requests 1000] [--backend sqlite|postgresql|both]``. A table
goes to stdout, then one JSON line per backend; the last line is the backend with the worse
list p99: ``{"name": "api", "list_p99_ms": …, "get_p99_ms": …, "backend": …, …}``.
Targets: list p99 < 50 ms, get p99 < 10 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
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
TARGETS = {"list_p99_ms": 50.0, "get_p99_ms": 10.0}


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
def control_plane(data_dir: Path, url: str) -> Iterator[tuple[str, str]]:
    """A real `virtpool server` on ``url``; yields its base URL and admin token."""
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
        yield url_file.read_text().strip(), (data_dir / "admin.token").read_text().strip()
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


def measure(backend: str, url: str, data_dir: Path, vms: int, requests: int, rng: random.Random) -> dict[str, object]:
    log(f"[{backend}] writing {vms} VM records")
    records = sorted(seed_vms(url, vms))
    # Pages as a client reads them along the next links: a cursor (name:id) anywhere in the list.
    cursors = [records[rng.randrange(0, vms - PAGE)] for _ in range(requests)]
    offsets = [rng.randrange(0, vms // PAGE) * PAGE for _ in range(requests)]
    lookups = [rng.choice(records)[0] for _ in range(requests)]
    list_paths = [f"/vms?limit={PAGE}&after={name}:{vm_id}" for name, vm_id in cursors]
    with control_plane(data_dir, url) as (base, token), httpx.Client(
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
    raw = raw_db(url, cursors, lookups)
    return {
        "backend": backend, "vms": vms, "requests": requests,
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
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


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
        "vms": result["vms"], "requests": result["requests"],
        "meets_targets": listing["p99_ms"] < TARGETS["list_p99_ms"] and getting["p99_ms"] < TARGETS["get_p99_ms"],  # type: ignore[index]
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1_000)
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
                                   args.vms, args.requests, rng))
        if args.backend in ("postgresql", "both"):
            data_dir = root / "postgresql" / "data"
            data_dir.mkdir(parents=True, mode=0o700)
            with postgres_server() as url:
                results.append(measure("postgresql", url, data_dir, args.vms, args.requests, rng))
    print(table(results))
    results.sort(key=lambda r: r["list"]["p99_ms"])  # type: ignore[index]
    for result in results:  # the worse backend last
        print(line(result), flush=True)


if __name__ == "__main__":
    main()
