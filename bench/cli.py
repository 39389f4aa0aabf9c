"""CLI cold start: `virtpool vm list` against a running platform, against the same request with
curl and a bare Python start, in the same run.

Prints the median of 20 cold starts of each, the ratio to curl, and the top import costs of
`virtpool vm list`, `virtpool vm show` (a command that goes through Typer and the SDK) and
`virtpool vm create` from ``python -X importtime``. `vm create` (a record, not started) is
timed on its fast path and, interleaved, through Typer's command with the same request. Last line: JSON ``{"name": "cli", "cold_start_s": …}``.

With ``--https`` the server serves HTTPS on loopback with a certificate of a CA made for the
run, which the CLI checks through VIRTPOOL_CA (and curl through --cacert): what a client of a
server beyond loopback pays for TLS.

Usage: .venv/bin/python bench/cli.py [--runs 20] [--https]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_server import VIRTPOOL, Server, link_image, note

from virtpool.model.resources import MAX_RATIO
from virtpool.sdk import Client

REPO = Path(__file__).resolve().parent.parent
VMS = 10


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    """Wall time of ``runs`` fresh processes of ``argv`` (each one a cold start of Python)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{argv} failed: {done.stderr.decode()}")
    return times


def timed_creates(argv: list[str], env: dict[str, str], runs: int, api: Client, prefix: str) -> list[float]:
    """Wall time of ``runs`` `virtpool vm create NAME …` (records only, never started), each VM
    deleted again outside the timing."""
    times = []
    for i in range(runs):
        name = f"{prefix}-{i}"
        times += timed([VIRTPOOL, "vm", "create", name, *argv], env, 1)
        api.delete_vm(name)
    return times


def import_costs(argv: list[str], env: dict[str, str], top: int = 8) -> list[tuple[str, float]]:
    """The modules with the highest cumulative import time (ms) in one run of ``argv``."""
    run = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, capture_output=True, text=True)
    costs = []
    for line in run.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            _, cumulative, name = line.removeprefix("import time:").split("|")
            # Nested imports are indented under their parent, whose time includes theirs.
            if cumulative.strip().isdigit() and not name.startswith("  "):
                costs.append((name.strip(), int(cumulative) / 1000))
    return sorted(costs, key=lambda c: -c[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--https", action="store_true", help="serve and call over HTTPS")
    parser.add_argument("--images", type=Path, default=Path(os.environ.get(
        "VIRTPOOL_TEST_IMAGES", REPO / ".cache" / "images")), help="image cache (the default image)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    link_image(args.images, data_dir)
    extra: tuple[str, ...] = ()
    ca_file: Path | None = None
    if args.https:
        from virtpool.control.pki import CertificateAuthority

        ca = CertificateAuthority.load_or_create(root / "bench-ca")
        files = ca.issue("api", "bench", ["127.0.0.1"], client=False, server=True)
        extra, ca_file = ("--tls-cert", str(files.cert), "--tls-key", str(files.key)), ca.cert_file
    server = Server(data_dir, boot_timeout=60, extra_args=extra, ca=ca_file)
    try:
        api = server.start()
        # Records, never started: many small VMs on a small machine need the highest CPU ratio.
        api.set_host_ratios(api.host().hostname, cpu=MAX_RATIO)
        for i in range(VMS):
            api.create_vm(f"bench-{i}", memory_mib=64)
        env = {**server.env, **({"VIRTPOOL_CA": str(ca_file)} if ca_file else {})}
        token = (data_dir / "admin.token").read_text().strip()
        url = (data_dir / "api.url").read_text().strip()
        timed([VIRTPOOL, "vm", "list"], env, 2)  # the page cache, not a start, is warm after this
        cli = timed([VIRTPOOL, "vm", "list"], env, args.runs)
        show = timed([VIRTPOOL, "vm", "show", "bench-0"], env, args.runs)
        version = timed([VIRTPOOL, "--version"], env, args.runs)
        # `vm create` (what bench/boot.py times with --start --wait) on its fast path, and the
        # same request through Typer's command (a flag the fast path leaves to it), interleaved.
        creates: dict[str, list[float]] = {"fast": [], "typer": []}
        for i in range(args.runs):
            creates["fast"] += timed_creates(["--memory", "64M"], env, 1, api, f"fast-{i}")
            creates["typer"] += timed_creates(["--memory", "64M", "--cpu-weight", "100"], env, 1, api, f"typer-{i}")
        python = timed([sys.executable, "-c", "pass"], env, args.runs)
        curl_path = shutil.which("curl")
        cacert = ["--cacert", str(ca_file)] if ca_file else []
        curl = timed([curl_path, "-sf", *cacert, "-H", f"Authorization: Bearer {token}",
                      f"{url}/api/v1/vms?limit=1000"], env, args.runs) if curl_path else []
        med = {k: statistics.median(v) for k, v in
               (("vm list", cli), ("vm show (Typer + SDK)", show), ("--version", version),
                ("vm create", creates["fast"]), ("vm create via Typer", creates["typer"]),
                ("python -c pass", python), ("curl, same request", curl)) if v}
        print(f"cold starts, median of {args.runs} (with {VMS} VMs):")
        for what, seconds in med.items():
            print(f"  {what:<24} {seconds * 1000:7.1f} ms")
        if curl:
            print(f"  vm list / curl          {med['vm list'] / med['curl, same request']:7.2f}x")
        print(f"  vm create / via Typer   {med['vm create'] / med['vm create via Typer']:7.2f}x")
        for label, argv in (("vm list", [VIRTPOOL, "vm", "list"]), ("vm show", [VIRTPOOL, "vm", "show", "bench-0"]),
                            ("vm create", [VIRTPOOL, "vm", "create", "imports", "--memory", "64M"])):
            print(f"top import costs of `virtpool {label}` (cumulative ms):")
            for name, ms in import_costs(argv, env):
                print(f"  {name:<40} {ms:7.1f}")
        result = {"name": "cli", "https": args.https, "cold_start_s": round(med["vm list"], 4),
                  "vm_show_s": round(med["vm show (Typer + SDK)"], 4), "version_s": round(med["--version"], 4),
                  "python_s": round(med["python -c pass"], 4), "vm_create_s": round(med["vm create"], 4),
                  "vm_create_typer_s": round(med["vm create via Typer"], 4)}
        if curl:
            result["curl_s"] = round(med["curl, same request"], 4)
            result["ratio_vs_curl"] = round(med["vm list"] / med["curl, same request"], 2)
        print(json.dumps(result))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        note("bench/cli.py: done")


if __name__ == "__main__":
    main()
