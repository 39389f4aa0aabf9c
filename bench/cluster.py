#!/usr/bin/env python3
"""Boot-to-ready on a remote agent, on the local agent, and with bare QEMU, interleaved.

"Ready" means what ``bench/boot.py`` means: the guest agent answers ``guest-sync-delimited``,
the check an agent's ``wait_ready`` makes before virtpool reports a VM ``running``.

One `virtpool up` (the control plane with its in-process agent: the *local* host) and one
`virtpool agent` joined to it with a join token (the *remote* host: another process, its own data
dir, reached over HTTPS with mutual TLS on loopback; a network namespace would add a veth hop of
microseconds, not a different path). Each round, in an order that rotates:

* **remote** — ``Client.create_vm(NAME, host=REMOTE, start=True)`` then ``wait_vm`` (a long
  poll), from a constructed client: placement, the records, the HTTPS calls to the agent (disk,
  networks, start, wait-ready), the state's way back;
* **local** — the same pinned to the `up`'s own host (its agent in process);
* **baseline** — ``qemu-system-x86_64`` with the argv virtpool builds for an identical VM
  (``bench/boot.py``'s ``Baseline``), timed from spawn until its guest agent answers.

The remote host fetches the image once, in a warm-up round that is not timed. The first timed
round checks that the remote QEMU runs the baseline's argv, paths and MAC aside.

Usage: ``.venv/bin/python bench/cluster.py [--runs N] [--images DIR]``. The last line of stdout
is one JSON object::

    {"name": "cluster", "remote_s": ..., "local_s": ..., "baseline_s": ..., "ratio": ...}

``ratio`` is remote ÷ bare (target ≤ 1.10); ``local_ratio`` is local ÷ bare. Exit status 0
whether or not the target is met; non-zero when something fails to boot or to set up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_server import IMAGE, VIRTPOOL, BenchError, Server, kill_qemus_under, link_image, note
from boot import BOOT_TIMEOUT_S, Baseline

import psutil

from virtpool.model.states import VMState
from virtpool.node.images.build import build_default_image
from virtpool.sdk import Client
from virtpool.sdk.client import SETTLED

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.10
REMOTE = "bench-remote"
KINDS = ("baseline", "local", "remote")


class RemoteAgent:
    """A `virtpool agent` process joined to ``server`` as host ``REMOTE``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log = data_dir.parent / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, server: Server, client: Client) -> None:
        token = client.join_token(600)["token"]
        join = (server.data_dir / "join.url").read_text().strip()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [VIRTPOOL, "agent", "--server", join, "--join", token, "--data-dir", str(self.data_dir),
                 "--listen", "127.0.0.1:0", "--name", REMOTE, "--net-prefix", "vb"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        # Up, with the capacity its agent reported (the host's row is made at enrolment).
        while not any(h.name == REMOTE and h.state == "up" and h.memory_mib.capacity > 0
                      for h in client.hosts()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"virtpool agent did not join:\n{self.log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def check_same_argv(data_dir: Path, vm_id: str, baseline_argv: list[str], baseline_dir: Path) -> None:
    """The remote QEMU runs the baseline's argv, but for paths and the MAC (made from the VM's
    id, which differs)."""
    pid = int((data_dir / "vms" / vm_id / "qemu.pid").read_text().strip())

    def masked(argv: list[str], vm_dir: Path, images: Path) -> list[str]:
        return [re.sub(r"mac=[0-9a-f:]+", "mac=<MAC>", a.replace(str(vm_dir), "<VM>")
                       .replace(str(images), "<IMAGES>")) for a in argv]

    theirs = masked(psutil.Process(pid).cmdline(), data_dir / "vms" / vm_id, data_dir / "images")
    ours = masked(baseline_argv, baseline_dir, baseline_dir.parent.parent / "images")
    if theirs != ours:
        diff = [(a, b) for a, b in zip(theirs, ours) if a != b] or [(len(theirs), len(ours))]
        raise BenchError(f"the remote QEMU's argv differs from the baseline's: {diff}")


def run_pinned(client: Client, name: str, host: str) -> tuple[float, str]:
    start = time.perf_counter()
    client.create_vm(name, host=host, start=True)
    vm = client.wait_vm(name, until=SETTLED, timeout=BOOT_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    if vm.state != VMState.RUNNING or vm.host != host:
        raise BenchError(f"VM {name} is {vm.state.value} on {vm.host}: {vm.error}")
    return elapsed, vm.id


def report(results: dict[str, list[float]], runs: int) -> dict[str, object]:
    labels = {"baseline": "bare QEMU", "local": "local agent", "remote": "remote agent"}
    print(f"{'run':>8} " + " ".join(f"{labels[k]:>13}" for k in KINDS))
    for i in range(runs):
        print(f"{i + 1:>8} " + " ".join(f"{results[k][i]:>12.3f}s" for k in KINDS))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{'median':>8} " + " ".join(f"{med[k]:>12.3f}s" for k in KINDS))
    print(f"{'min':>8} " + " ".join(f"{min(results[k]):>12.3f}s" for k in KINDS))
    ratio = med["remote"] / med["baseline"]
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(f"ratio (remote median / bare median) = {ratio:.3f} ({verdict} the target <= {TARGET_RATIO}); "
          f"local / bare = {med['local'] / med['baseline']:.3f}")
    return {"name": "cluster", "remote_s": round(med["remote"], 4), "local_s": round(med["local"], 4),
            "baseline_s": round(med["baseline"], 4), "ratio": round(ratio, 4),
            "local_ratio": round(med["local"] / med["baseline"], 4), "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="rounds (at least 3; default 7)")
    parser.add_argument("--images", type=Path, default=Path(os.environ.get(
        "VIRTPOOL_TEST_IMAGES", REPO / ".cache" / "images")), help="image cache (built if missing)")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    build_default_image(args.images, IMAGE)

    root = Path(tempfile.mkdtemp(prefix="virtpool-bench-cluster-"))
    root.chmod(0o711)  # VMs run as their own users and must pass through to their run dirs
    server = Server(root / "data", BOOT_TIMEOUT_S)
    agent = RemoteAgent(root / "agent")
    baseline = Baseline(root / "scratch")
    results: dict[str, list[float]] = {k: [] for k in KINDS}
    began = time.monotonic()
    try:
        for d in (server.data_dir, baseline.data_dir):
            d.mkdir(mode=0o700)
            link_image(args.images, d)
        baseline.data_dir.chmod(0o711)
        names = [f"cl{i:03d}" for i in range(args.runs)]
        prepared = baseline.prepare(names)
        client = server.start()
        local = client.host().hostname
        agent.start(server, client)
        # Warm-up, not timed: the remote host fetches the image from the control plane.
        run_pinned(client, "warmup", REMOTE)
        client.delete_vm("warmup", force=True)
        note(f"virtpool up at {client.url} (local host {local}), agent {REMOTE}; {args.runs} rounds")
        for i, name in enumerate(names):
            argv, vm_dir = prepared[name]
            for kind in KINDS[i % 3:] + KINDS[:i % 3]:  # rotate who goes first
                if kind == "baseline":
                    elapsed = baseline.run(name, argv, vm_dir)
                else:
                    # The baseline's name: the argv (guest name, hostname, MAC) is the same.
                    elapsed, vm_id = run_pinned(client, name, local if kind == "local" else REMOTE)
                    if i == 0 and kind == "remote":
                        check_same_argv(agent.data_dir, vm_id, argv, vm_dir)
                    client.delete_vm(name, force=True)
                results[kind].append(elapsed)
                note(f"round {i + 1}/{args.runs} {kind:>8}: {elapsed:.3f}s")
    except BenchError as err:
        note(f"benchmark failed: {err}")
        return 1
    finally:
        server.stop()
        agent.stop()
        baseline.close()
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)
        note(f"wall time {time.monotonic() - began:.1f}s")
    print(json.dumps(report(results, args.runs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
