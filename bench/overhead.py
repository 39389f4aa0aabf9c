#!/usr/bin/env python3
"""Virtualization overhead: the same workloads in a guest and on the host; an idle VM's memory.

Two measurements, both against a real ``virtpool up`` on a scratch data dir:

**Workload ratio.** The guest's userland is Debian's static busybox, and the host has the same
package's ``/bin/busybox``: the benchmark checks that both files hash the same, then runs the
*same* ``busybox sh -c SCRIPT`` in the guest (through ``Client.exec``, i.e. the guest agent) and
on the host (``subprocess``). The time is taken inside the script in both places, with
``busybox adjtimex`` (the wall clock to the microsecond; busybox's ``date`` has no ``%N``), so the
guest-agent round trip is not counted. The guest's clock under TCG follows the host's TSC; each
guest run is also timed from the host around the exec call, and a guest figure larger than that
would be reported as an error. Workloads (sizes fixed, identical on both sides):

* ``cpu`` — a shell arithmetic loop run by busybox ash. ``[`` and ``$((...))`` are ash builtins:
  no process is started, no system call made and no data touched beyond a few cache lines, so
  its time is pure instruction execution. This is the headline ``cpu_ratio``.
* ``cpu-hash`` — ``busybox sha256sum`` three times over a 16 MiB file on tmpfs: a tight
  compute loop of native code (the read() calls are a small part of it). Reported alongside,
  because an interpreter loop (branches, indirect calls) and a hashing loop (ALU work) do not
  cost the same to emulate.
* ``memory`` — ``busybox dd if=FILE of=/dev/null bs=1M`` twelve times over a 64 MiB file on
  tmpfs: each pass is the kernel copying 64 MiB from the page cache into a 1 MiB user buffer,
  i.e. bulk loads and stores over a working set 32 times a core's L2; almost no computation
  per byte. (The guest has 256 MiB of RAM, so the file cannot be made larger than the host's
  L3 cache, which machines like ours report as hundreds of MiB: on the host it streams from L3
  and DRAM. The twelve ``dd`` process starts are a few percent of a pass on either side.)

The files live on tmpfs on both sides (the guest's ``/tmp``, the host's ``/dev/shm``) and are
written before timing. One untimed warm-up run of each, then ``--runs`` rounds, guest and host
interleaved (which goes first alternates) so that drift on a shared machine hits both. The ratio
is median(guest) / median(host). Under TCG this is what emulation costs; it is reported as is.

**Idle memory overhead.** ``--vms`` idle VMs (default image, 256 MiB) are created through the
platform and left to settle (``--settle`` s); for each, its QEMU's ``/proc/PID/smaps`` is read:
the overhead is the total Rss less the Rss of the guest-RAM mapping (the anonymous mapping of
exactly the guest's ``-m`` size). The rest is broken down into the TCG translation buffer (the
anonymous rwx mapping), the kernel and initrd files QEMU keeps mapped (its ROM copies of what it
loaded), the QEMU binary and its libraries, and other anonymous memory (heap, malloc arenas,
softmmu TLBs, thread stacks, device state). The median over the VMs is the figure; the target is
at most 40 MiB. Reported too, as KubeVirt counts it: the unique memory (USS: private pages) beyond
the guest RAM's and the TCG cache's own (``idle_uss_overhead_mib``), with the TCG cache's resident
size apart (``tcg_cache_mib``), since a KVM host has no such cache. The VM that ran the workloads is measured again after them, for comparison.

Usage: ``.venv/bin/python bench/overhead.py [--runs N] [--vms N] [--settle S] [--images DIR]``
(``./bench/overhead.py`` re-executes itself with the repo's ``.venv``). A table is printed, and
the last line of stdout is one JSON object::

    {"name": "overhead", "cpu_ratio": ..., "memory_ratio": ..., "idle_rss_overhead_mib": ...,
     "idle_rss_total_mib": ..., ...}

Exit status 0 when the benchmark ran, whether or not the memory target is met; non-zero when a
VM fails to boot, a workload fails or the set-up fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import psutil
except ImportError:  # run as ./bench/overhead.py by a Python without virtpool: use the repo's venv
    _VENV_PYTHON = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
    if _VENV_PYTHON.exists() and Path(sys.executable) != _VENV_PYTHON:
        os.execv(str(_VENV_PYTHON), [str(_VENV_PYTHON), __file__, *sys.argv[1:]])
    raise

from bench_server import IMAGE, BenchError, Server, kill_qemus_under, link_image, note

from virtpool.model.states import VMState
from virtpool.node.images.build import build_default_image
from virtpool.sdk import APIError, Client
from virtpool.sdk.client import SETTLED

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = "/bin/busybox"  # the same path in the guest and on the host
GUEST_MEMORY_MIB = 256
BOOT_TIMEOUT_S = 180.0
EXEC_TIMEOUT_S = 600.0
TARGET_RSS_OVERHEAD_MIB = 40.0
MIB = 1024 * 1024

# -- the workloads: one shell script each, run by busybox sh in $D (a tmpfs directory) ------

CPU_LOOP_ITERATIONS = 150_000
HASH_FILE_MIB = 16
HASH_PASSES = 3
MEMORY_FILE_MIB = 64
MEMORY_PASSES = 12

SETUP = (
    f'mkdir -p "$D" && cd "$D" && '
    f"{BUSYBOX} dd if=/dev/zero of=hash.bin bs=1M count={HASH_FILE_MIB} 2>/dev/null && "
    f"{BUSYBOX} dd if=/dev/zero of=mem.bin bs=1M count={MEMORY_FILE_MIB} 2>/dev/null && "
    f"{BUSYBOX} sha256sum {BUSYBOX}"
)
WORKLOADS = {
    "cpu": f"i=0; while [ $i -lt {CPU_LOOP_ITERATIONS} ]; do i=$((i+1)); done",
    "cpu-hash": f"{BUSYBOX} sha256sum" + " hash.bin" * HASH_PASSES + " >/dev/null",
    "memory": f"for j in {' '.join(str(n) for n in range(MEMORY_PASSES))}; do "
              f"{BUSYBOX} dd if=mem.bin of=/dev/null bs=1M 2>/dev/null || exit 1; done",
}
DESCRIPTIONS = {
    "cpu": f"ash arithmetic loop, {CPU_LOOP_ITERATIONS} iterations",
    "cpu-hash": f"sha256sum {HASH_PASSES} x {HASH_FILE_MIB} MiB (tmpfs)",
    "memory": f"dd {MEMORY_PASSES} x {MEMORY_FILE_MIB} MiB tmpfs -> /dev/null",
}


def timed_script(work: str) -> str:
    """``work`` between two readings of the clock, run in ``$D``; only the readings are printed."""
    return f'cd "$D" && {BUSYBOX} adjtimex && {{ {work} ; }} && {BUSYBOX} adjtimex'


def parse_elapsed(output: str) -> float:
    """Seconds between the two ``adjtimex`` readings in ``output``."""
    secs = [int(v) for v in re.findall(r"time\.tv_sec:\s*(\d+)", output)]
    usecs = [int(v) for v in re.findall(r"time\.tv_usec:\s*(\d+)", output)]
    if len(secs) != 2 or len(usecs) != 2:
        raise BenchError(f"cannot read two clock readings from the workload's output: {output!r}")
    return (secs[1] - secs[0]) + (usecs[1] - usecs[0]) / 1e6


def tmpfs_dir(fallback: Path) -> tuple[Path, bool]:
    """A fresh directory on tmpfs for the host's files (the guest's /tmp is tmpfs too)."""
    with open("/proc/mounts") as mounts:
        tmpfs = {line.split()[1] for line in mounts if line.split()[2] == "tmpfs"}
    for candidate in ("/dev/shm", "/run", "/tmp"):
        if candidate in tmpfs and os.access(candidate, os.W_OK):
            return Path(tempfile.mkdtemp(prefix="virtpool-overhead-", dir=candidate)), True
    path = fallback / "host-work"
    path.mkdir()
    return path, False


# -- running the workloads ---------------------------------------------------------------------


@dataclass
class Side:
    """Where a script runs: the guest (through the API) or the host (a subprocess)."""

    kind: str
    workdir: str
    client: Client | None = None
    vm: str = ""
    exec_overheads: list[float] = field(default_factory=list)

    def sh(self, script: str) -> str:
        script = f"D={self.workdir}; {script}"
        if self.kind == "host":
            done = subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, text=True,
                                  timeout=EXEC_TIMEOUT_S, check=False)
            code, out, err = done.returncode, done.stdout, done.stderr
        else:
            assert self.client is not None
            result = self.client.exec(self.vm, [BUSYBOX, "sh", "-c", script], timeout=EXEC_TIMEOUT_S)
            code, out, err = result.exit_code, result.stdout, result.stderr
        if code != 0:
            raise BenchError(f"{self.kind}: `{script}` exited {code}: {out}{err}")
        return out

    def timed(self, work: str) -> float:
        start = time.perf_counter()
        out = self.sh(timed_script(work))
        outside = time.perf_counter() - start
        inside = parse_elapsed(out)
        if inside <= 0 or inside > outside + 0.05:
            raise BenchError(f"{self.kind}: the clock inside says {inside:.3f}s for a run that "
                             f"took {outside:.3f}s seen from the host: its clock is not usable")
        self.exec_overheads.append(outside - inside)
        return inside


def host_busybox_sha256() -> str:
    try:
        return hashlib.sha256(Path(BUSYBOX).read_bytes()).hexdigest()
    except OSError as err:
        raise BenchError(f"the host has no {BUSYBOX} (apt-get install busybox-static): {err}") from None


def run_workloads(guest: Side, host: Side, runs: int) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {w: {"guest": [], "host": []} for w in WORKLOADS}
    sides = {"guest": guest, "host": host}
    for name, work in WORKLOADS.items():  # warm-up: page cache, translation cache, CPU caches
        for side in sides.values():
            side.timed(work)
        note(f"warm-up {name}: done")
    for r in range(runs):
        for i, (name, work) in enumerate(WORKLOADS.items()):
            order = ["guest", "host"] if (r + i) % 2 == 0 else ["host", "guest"]
            for kind in order:
                times[name][kind].append(sides[kind].timed(work))
            note(f"round {r + 1}/{runs} {name:>8}: guest {times[name]['guest'][-1]:.3f}s, "
                 f"host {times[name]['host'][-1]:.3f}s")
    return times


# -- idle memory from /proc/PID/smaps ------------------------------------------------------------

_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
CATEGORIES = {
    "tcg": "TCG translation buffer",
    "images": "kernel + initrd files",
    "binaries": "QEMU binary + libraries",
    "other": "other (heap, arenas, TLBs...)",
}


@dataclass
class Mapping:
    perms: str
    name: str
    fields: dict[str, int]

    @property
    def size_kib(self) -> int:
        return self.fields.get("Size", 0)

    @property
    def rss_kib(self) -> int:
        return self.fields.get("Rss", 0)

    @property
    def anonymous(self) -> bool:
        return not self.name  # no path: not file-backed, not [heap]/[stack]/[vdso]


def read_smaps(pid: int) -> list[Mapping]:
    mappings: list[Mapping] = []
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            match = _MAPPING.match(line)
            if match:
                mappings.append(Mapping(match.group(3), match.group(4).strip(), {}))
            elif mappings and ":" in line:
                key, _, value = line.partition(":")
                parts = value.split()
                if parts and parts[0].isdigit():
                    mappings[-1].fields[key] = int(parts[0])
    return mappings


def _arg_after(cmdline: list[str], flag: str) -> str | None:
    for i, arg in enumerate(cmdline[:-1]):
        if arg == flag:
            return cmdline[i + 1]
    return None


def guest_ram_mib(cmdline: list[str]) -> int:
    value = _arg_after(cmdline, "-m")
    match = re.fullmatch(r"(?:size=)?(\d+)([MG]?)", (value or "").split(",")[0])
    if not match:
        raise BenchError(f"cannot read the guest's memory size from QEMU's -m {value!r}")
    return int(match.group(1)) * (1024 if match.group(2) == "G" else 1)


@dataclass
class MemorySample:
    """One QEMU's resident memory, in KiB, split into guest RAM and the categories above."""

    vm: str
    guest_ram_mib: int
    total_kib: int
    guest_ram_kib: int
    pss_kib: int
    guest_ram_pss_kib: int
    by_category: dict[str, int]
    anon_by_category: dict[str, int]
    uss_kib: int = 0  # unique to this process: Private_Clean + Private_Dirty of every mapping
    guest_ram_uss_kib: int = 0
    tcg_uss_kib: int = 0

    @property
    def uss_overhead_mib(self) -> float:
        """Unique memory beyond guest RAM and the TCG cache: what a KVM host would pay too."""
        return (self.uss_kib - self.guest_ram_uss_kib - self.tcg_uss_kib) / 1024

    @property
    def tcg_cache_mib(self) -> float:
        """The TCG translation cache's resident size (a KVM host has none)."""
        return self.by_category["tcg"] / 1024

    @property
    def overhead_mib(self) -> float:
        return (self.total_kib - self.guest_ram_kib) / 1024

    @property
    def pss_overhead_mib(self) -> float:
        return (self.pss_kib - self.guest_ram_pss_kib) / 1024

    @property
    def private_anon_overhead_mib(self) -> float:
        return sum(self.anon_by_category.values()) / 1024


def measure_memory(vm: str, pid: int) -> MemorySample:
    cmdline = psutil.Process(pid).cmdline()
    ram_mib = guest_ram_mib(cmdline)
    mappings = read_smaps(pid)
    # The guest RAM: the anonymous mapping of exactly the guest's size; failing that (a QEMU
    # that splits or pads it), the largest anonymous mapping at least that large.
    exact = [m for m in mappings if m.anonymous and m.size_kib == ram_mib * 1024]
    if len(exact) == 1:
        ram = exact[0]
    else:
        larger = [m for m in mappings if m.anonymous and m.size_kib >= ram_mib * 1024]
        if not larger:
            raise BenchError(f"no anonymous mapping of {ram_mib} MiB in /proc/{pid}/smaps")
        ram = max(larger, key=lambda m: m.size_kib)
    images = {_arg_after(cmdline, "-kernel"), _arg_after(cmdline, "-initrd")} - {None}
    by_category = dict.fromkeys(CATEGORIES, 0)
    anon_by_category = dict.fromkeys(CATEGORIES, 0)
    tcg_uss = 0
    for m in mappings:
        if m is ram:
            continue
        if (m.anonymous and "x" in m.perms and "w" in m.perms) or m.name.startswith("/memfd:tcg-jit"):
            category = "tcg"
        elif m.name in images:
            category = "images"
        elif m.name.startswith("/"):
            category = "binaries"
        else:
            category = "other"
        by_category[category] += m.rss_kib
        anon_by_category[category] += m.fields.get("Anonymous", 0)
        if category == "tcg":
            tcg_uss += _private_kib(m)
    return MemorySample(
        vm=vm, guest_ram_mib=ram_mib,
        total_kib=sum(m.rss_kib for m in mappings), guest_ram_kib=ram.rss_kib,
        pss_kib=sum(m.fields.get("Pss", 0) for m in mappings), guest_ram_pss_kib=ram.fields.get("Pss", 0),
        by_category=by_category, anon_by_category=anon_by_category,
        uss_kib=sum(_private_kib(m) for m in mappings), guest_ram_uss_kib=_private_kib(ram), tcg_uss_kib=tcg_uss,
    )


def _private_kib(m: Mapping) -> int:
    """A mapping's pages no other process maps (what psutil's USS sums)."""
    return m.fields.get("Private_Clean", 0) + m.fields.get("Private_Dirty", 0)


def boot_vms(client: Client, names: list[str]) -> dict[str, str]:
    """Create and start the VMs (they boot concurrently); name -> VM id."""
    for name in names:
        client.create_vm(name, image=IMAGE, memory_mib=GUEST_MEMORY_MIB, start=True)
    ids = {}
    for name in names:
        vm = client.wait_vm(name, until=SETTLED, timeout=BOOT_TIMEOUT_S)
        if vm.state != VMState.RUNNING:
            raise BenchError(f"VM {name} is {vm.state.value}: {vm.error}")
        ids[name] = vm.id
    return ids


# -- reporting -------------------------------------------------------------------------------------


def _mib(kib: float) -> str:
    return f"{kib / 1024:8.1f}"


def report_workloads(times: dict[str, dict[str, list[float]]], runs: int) -> dict[str, dict[str, float]]:
    print(f"Workloads: same busybox, median of {runs} interleaved runs (seconds, timed inside)")
    print(f"{'workload':>9} {'guest':>9} {'host':>9} {'ratio':>8} {'min ratio':>10}  guest runs / host runs")
    summary = {}
    for name in WORKLOADS:
        guest, host = times[name]["guest"], times[name]["host"]
        med_g, med_h = statistics.median(guest), statistics.median(host)
        summary[name] = {"guest_s": med_g, "host_s": med_h, "ratio": med_g / med_h}
        print(f"{name:>9} {med_g:9.3f} {med_h:9.3f} {med_g / med_h:8.2f} {min(guest) / min(host):10.2f}  "
              + " ".join(f"{t:.2f}" for t in guest) + " / " + " ".join(f"{t:.3f}" for t in host))
    for name, text in DESCRIPTIONS.items():
        print(f"  {name}: {text}")
    return summary


def report_memory(idle: list[MemorySample], after: MemorySample | None) -> None:
    print()
    print("QEMU resident memory (MiB, from /proc/PID/smaps; 'anon' = anonymous part of the Rss)")
    samples = [(f"{s.vm} idle", s) for s in idle]
    if after is not None:
        samples.append((f"{after.vm} after load", after))
    header = f"{'':>40}" + "".join(f"{label:>22}" for label, _ in samples)
    print(header)

    def row(label: str, values: list[str]) -> None:
        print(f"{label:>40}" + "".join(f"{v:>22}" for v in values))

    row("total Rss", [_mib(s.total_kib) for _, s in samples])
    row(f"guest RAM mapping (of {idle[0].guest_ram_mib} MiB)", [_mib(s.guest_ram_kib) for _, s in samples])
    row("overhead = total - guest RAM", [f"{s.overhead_mib:8.1f}" for _, s in samples])
    for key, label in CATEGORIES.items():
        row(f"{label}: Rss / anon", [f"{_mib(s.by_category[key]).strip()} / {_mib(s.anon_by_category[key]).strip()}"
                                     for _, s in samples])
    row("overhead in Pss (shared divided)", [f"{s.pss_overhead_mib:8.1f}" for _, s in samples])
    row("overhead, anonymous part only", [f"{s.private_anon_overhead_mib:8.1f}" for _, s in samples])
    row("USS total", [_mib(s.uss_kib) for _, s in samples])
    row("USS beyond guest RAM and TCG cache", [f"{s.uss_overhead_mib:8.1f}" for _, s in samples])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds of each workload (default 5)")
    parser.add_argument("--vms", type=int, default=3, help="idle VMs measured for memory (default 3)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds idle before reading smaps (default 10)")
    parser.add_argument("--images", type=Path, default=Path(os.environ.get(
        "VIRTPOOL_TEST_IMAGES", REPO / ".cache" / "images")), help="image cache (built if missing)")
    args = parser.parse_args()
    if args.runs < 3 or args.vms < 1:
        parser.error("--runs must be at least 3 and --vms at least 1")

    began = time.monotonic()
    note(f"image: {args.images / IMAGE}")
    _, built = build_default_image(args.images, IMAGE)
    if built:
        note("built the default image")

    root = Path(tempfile.mkdtemp(prefix="virtpool-bench-"))
    root.chmod(0o711)  # as root, each VM's QEMU runs as its own user and must pass through
    server = Server(root / "data", BOOT_TIMEOUT_S)
    host_dir, host_on_tmpfs = tmpfs_dir(root)
    try:
        server.data_dir.mkdir(mode=0o700)
        link_image(args.images, server.data_dir)
        client = server.start()
        note(f"virtpool up at {client.url}; booting {args.vms} idle VM(s)")
        names = [f"overhead{i}" for i in range(args.vms)]
        ids = boot_vms(client, names)
        qemu_cmdline = psutil.Process(server.qemu_pid(ids[names[0]])).cmdline()
        accel = (_arg_after(qemu_cmdline, "-accel") or "?").split(",")[0]
        note(f"running ({accel}); settling {args.settle:g}s")
        time.sleep(args.settle)
        idle = [measure_memory(name, server.qemu_pid(ids[name])) for name in names]
        for name in names[1:]:  # the workloads run in the first VM, alone
            client.delete_vm(name, force=True)

        guest = Side("guest", "/tmp/virtpool-overhead", client=client, vm=names[0])
        host = Side("host", str(host_dir))
        guest_hash = guest.sh(SETUP).split()[0]
        host.sh(SETUP)
        same_binary = guest_hash == host_busybox_sha256()
        if not same_binary:
            note(f"warning: the guest's {BUSYBOX} differs from the host's: the ratio compares two binaries")
        times = run_workloads(guest, host, args.runs)
        after = measure_memory(names[0], server.qemu_pid(ids[names[0]]))
        guest.sh('rm -rf "$D"')
    except (BenchError, APIError) as err:
        note(f"benchmark failed: {err}")
        return 1
    finally:
        server.stop()
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(host_dir, ignore_errors=True)
    elapsed = time.monotonic() - began

    summary = report_workloads(times, args.runs)
    print(f"  same busybox in guest and host: {same_binary} (sha256 {guest_hash[:16]}…); host files on "
          f"{'tmpfs' if host_on_tmpfs else 'a disk filesystem'}; accel {accel} "
          f"({_arg_after(qemu_cmdline, '-accel')}); guest-agent round trip per exec, median "
          f"{statistics.median(guest.exec_overheads):.3f}s (not in the figures)")
    report_memory(idle, after)
    overhead = statistics.median(s.overhead_mib for s in idle)
    total = statistics.median(s.total_kib / 1024 for s in idle)
    median_sample = sorted(idle, key=lambda s: s.overhead_mib)[len(idle) // 2]
    verdict = "meets" if overhead <= TARGET_RSS_OVERHEAD_MIB else "misses"
    print(f"idle RSS overhead (median of {len(idle)}): {overhead:.1f} MiB of {total:.1f} MiB total "
          f"({verdict} the target <= {TARGET_RSS_OVERHEAD_MIB:g} MiB)")
    uss_overhead = statistics.median(s.uss_overhead_mib for s in idle)
    tcg_cache = statistics.median(s.tcg_cache_mib for s in idle)
    print(f"idle USS beyond guest RAM and the TCG cache (median): {uss_overhead:.1f} MiB "
          f"({'meets' if uss_overhead <= TARGET_RSS_OVERHEAD_MIB else 'misses'} the target <= "
          f"{TARGET_RSS_OVERHEAD_MIB:g} MiB); TCG translation cache {tcg_cache:.1f} MiB resident")
    print(f"cpu ratio {summary['cpu']['ratio']:.2f} (hash {summary['cpu-hash']['ratio']:.2f}), "
          f"memory ratio {summary['memory']['ratio']:.2f}, under {accel}; wall time {elapsed:.0f}s")

    result = {
        "name": "overhead",
        "cpu_ratio": round(summary["cpu"]["ratio"], 3),
        "cpu_hash_ratio": round(summary["cpu-hash"]["ratio"], 3),
        "memory_ratio": round(summary["memory"]["ratio"], 3),
        "idle_rss_overhead_mib": round(overhead, 1),
        "idle_rss_total_mib": round(total, 1),
        "idle_uss_overhead_mib": round(uss_overhead, 1),
        "tcg_cache_mib": round(tcg_cache, 1),
        "uss_target_met": uss_overhead <= TARGET_RSS_OVERHEAD_MIB,
        "idle_guest_ram_rss_mib": round(statistics.median(s.guest_ram_kib / 1024 for s in idle), 1),
        "idle_pss_overhead_mib": round(statistics.median(s.pss_overhead_mib for s in idle), 1),
        "idle_anon_overhead_mib": round(statistics.median(s.private_anon_overhead_mib for s in idle), 1),
        "idle_overhead_breakdown_mib": {k: round(v / 1024, 1) for k, v in median_sample.by_category.items()},
        "after_load_rss_overhead_mib": round(after.overhead_mib, 1),
        "idle_rss_overhead_per_vm_mib": [round(s.overhead_mib, 1) for s in idle],
        "rss_target_mib": TARGET_RSS_OVERHEAD_MIB,
        "rss_target_met": overhead <= TARGET_RSS_OVERHEAD_MIB,
        "workloads": {k: {"guest_s": round(v["guest_s"], 4), "host_s": round(v["host_s"], 4)}
                      for k, v in summary.items()},
        "same_binary": same_binary,
        "accel": accel,
        "qemu_accel_option": _arg_after(qemu_cmdline, "-accel"),
        "guest_memory_mib": GUEST_MEMORY_MIB,
        "runs": args.runs,
        "vms": args.vms,
        "wall_s": round(elapsed, 1),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
