"""The agent of one host, in the control plane's process (single-node mode).

It owns the QEMU processes, disks and images under the data dir and carries out what the
control plane asks, through the calls of ``virtpool.model.agent.Agent``. It keeps no state of
its own that matters: everything it needs after a restart is on disk (pidfile, sockets) and in
the control plane's database.

Async work (QMP, the guest agent, watching for QEMU's exit) runs on one event loop in a thread
of the agent's own, so that blocking callers (API worker threads, the CLI in-process) can use
it without an event loop of their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import psutil

from virtpool.model.agent import ExitHandler, Progress
from virtpool.model.errors import (
    BootTimeout,
    Conflict,
    InsufficientResources,
    NotFound,
    OperationFailed,
)
from virtpool.model.backup import BackupInfo
from virtpool.model.image import Firmware, ImageFile, ImageInfo
from virtpool.model.network import HostNetworkInput
from virtpool.model.snapshot import SnapshotInfo
from virtpool.model.spec import Accel, ExecResult, HostInfo, LiveChanges, VMSpec
from virtpool.model.vm import StopMethod
from virtpool.node import backups, disks, safe_files, serial, snapshots
from virtpool.node.images.manifest import Manifest
from virtpool.node.images.store import ImageStore, kernel_kind
from virtpool.node.net import guard, passt
from virtpool.node.net.apply import NetworkApplier
from virtpool.node.net.plan import HostPlan, host_plan
from virtpool.node.net.tap import open_tap
from virtpool.node.qemu import accel as accel_mod
from virtpool.node.qemu import process, qmp
from virtpool.node.qemu.argv import (
    BALLOON_ID,
    DISK_DEVICE_ID,
    DRIVE_ID,
    OVMF_VARS_TEMPLATE,
    LaunchPlan,
    NicPlan,
    build_argv,
)
from virtpool.node.qemu.guest_agent import GuestAgent, GuestAgentError, GuestAgentGone
from virtpool.node.sandbox import cgroups, uid_ranges, users
from virtpool.node.vmdir import VMPaths

log = logging.getLogger(__name__)
T = TypeVar("T")

READY_POLL_S = 0.05  # between guest-agent pings while a guest boots
# Log trimming and CPU sampling; a guest flooding its console at full speed writes ~1 MB/s
# under TCG, so a second is what the log may overshoot its cap by.
HOUSEKEEPING_INTERVAL_S = 1.0
MONITOR_TIMEOUT_S = 30.0  # from spawn until QEMU's monitor answers (devices set up)
# Charged to a VM's memory cgroup beyond its guest RAM: TCG's translation cache (capped at
# 64 MiB), QEMU's heap and the pages of the kernel it loads; measured ~80 MiB anonymous and
# ~74 MiB reclaimable file pages for a 256 MiB guest.
QEMU_OVERHEAD_MIB = 128
BALLOON_STATS_INTERVAL_S = 2  # how often the guest's balloon driver reports its free memory
BALLOON_PATH = f"/machine/peripheral/{BALLOON_ID}"
MIB = 1024 * 1024
HARD_STOP_GRACE_S = 3.0  # after QMP 'quit', before SIGKILL
# After the guest agent took a shutdown, the share of the stop timeout the guest gets before
# the ACPI power button is pressed as well (a guest whose agent said yes usually is on its way).
ACPI_SHARE_AFTER_AGENT = 0.7
QMP_CONNECT_TIMEOUT_S = 10.0
DEFAULT_REBOOT_WAIT_S = 60.0  # for the guest agent after a reboot, unless its boot said more


class LocalAgent:
    """The agent for the host this process runs on."""

    def __init__(
        self,
        data_dir: Path,
        *,
        accel: Accel = "auto",
        log_cap_bytes: int = serial.DEFAULT_CAP_BYTES,
        qemu_binary: str = "qemu-system-x86_64",
        net_prefix: str = "vp",
    ) -> None:
        self.data_dir = data_dir
        self.net_prefix = net_prefix
        self.images = ImageStore(data_dir / "images")
        self.vms_dir = data_dir / "vms"
        self.vms_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.images.remove_leftovers()
        self._accel, self._accel_reason = accel_mod.detect(accel)
        self._tsc_khz = accel_mod.host_tsc_khz()
        self._log_cap = log_cap_bytes
        self._qemu = qemu_binary
        self._names: dict[str, str] = {}
        self._procs: dict[str, psutil.Process] = {}
        self._popens: dict[int, subprocess.Popen[bytes]] = {}  # QEMUs we started, by pid
        # VM users (0711 dirs) pass through the data dir to their own run dir and the images.
        # Their uids come from a range no other agent on this host uses, held for our life.
        self._uids: uid_ranges.UidRangeClaim | None = None
        if users.running_as_root():
            os.chmod(self.vms_dir, 0o711)
            self._uids = uid_ranges.claim(data_dir)
            # Before any VM runs: its passt (as the VM's user) must not reach this host.
            guard.install(f"{net_prefix}guard")
        else:
            log.warning("not root: VMs run as this user, whose own connections to this host's "
                        "addresses no guard can drop; only the gateway is not mapped to loopback")
        self._networks = NetworkApplier(net_prefix, data_dir / "net")
        self._net_plan: HostPlan | None = None  # None: not converged since this agent started
        self._net_lock = threading.Lock()
        self._cgroups = users.running_as_root() and cgroups.available()
        if self._cgroups:
            cgroups.cleanup_orphans(self.vm_ids())
        self._watchers: dict[str, tuple[Future[None], psutil.Process]] = {}
        self._exit_handlers: list[ExitHandler] = []
        self._qga_locks: dict[str, asyncio.Lock] = {}
        # For reboots from inside a guest (QEMU runs with -no-reboot, so a reset is an exit):
        # how each VM was last started (spec, slot, how long its boot may take), which
        # guests have booted, and which VMs are being stopped on purpose.
        self._launches: dict[str, tuple[VMSpec, int, float]] = {}
        self._ready: set[str] = set()
        self._stopping: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agent-loop", daemon=True)
        self._thread.start()
        self._cpu_samples: dict[str, deque[tuple[float, float]]] = {}
        self._unsafe_logs: set[str] = set()  # VMs whose serial.log was replaced (warned once)
        self._housekeeper = self._submit(self._housekeeping_forever())

    # -- plumbing -------------------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self._submit(coro).result(timeout)

    def _paths(self, vm_id: str) -> VMPaths:
        return VMPaths(self.vms_dir / vm_id)

    def _label(self, vm_id: str) -> str:
        return self._names.get(vm_id, vm_id)

    def _process(self, vm_id: str) -> psutil.Process | None:
        """The VM's live QEMU: the one this agent knows, else the one its pidfile names."""
        proc = self._procs.get(vm_id)
        if proc is not None and process.alive(proc):
            return proc
        pidfile = self._paths(vm_id).pidfile
        proc = process.find(pidfile)
        if proc is None and not safe_files.is_plain(pidfile):
            proc = process.scan(pidfile)  # the VM's user replaced its pidfile: look by argv
        if proc is None:
            self._procs.pop(vm_id, None)
        else:
            self._procs[vm_id] = proc
        return proc

    def close(self) -> None:
        """Stop watching; the VMs themselves keep running."""

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self._run(cancel_all(), timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()
            if self._uids is not None:
                self._uids.release()

    # -- host -----------------------------------------------------------------------------

    def host_info(self) -> HostInfo:
        usage = shutil.disk_usage(self.data_dir)
        return HostInfo(
            hostname=socket.gethostname(),
            cpus=os.cpu_count() or 1,
            memory_mib=psutil.virtual_memory().total // (1024 * 1024),
            disk_total_mib=usage.total // (1024 * 1024),
            disk_free_mib=usage.free // (1024 * 1024),
            accel=self._accel,
            accel_reason=self._accel_reason,
            qemu_version=_qemu_version(self._qemu),
            data_dir=str(self.data_dir),
        )

    def check_port_free(self, port: int) -> bool:
        # passt binds forwarded ports with SO_REUSEADDR; so does this check, so that a port
        # in TIME_WAIT is not reported busy when passt could bind it.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    # -- images ---------------------------------------------------------------------------

    def list_images(self) -> list[ImageInfo]:
        return [_image_info(m) for m in self.images.list()]

    def get_image(self, name: str) -> ImageInfo:
        return _image_info(self.images.get(name))

    def build_image(self, name: str, progress: Progress | None = None) -> tuple[ImageInfo, bool]:
        manifest, built = self.images.build(name, progress)
        return _image_info(manifest), built

    def import_image(
        self, name: str, *, kernel: Path | None, initrd: Path | None, disk: Path | None,
        kernel_args: str, firmware: Firmware | None = None,
    ) -> ImageInfo:
        manifest = self.images.import_files(
            name, kernel=kernel, initrd=initrd, disk=disk, kernel_args=kernel_args,
            firmware=firmware, move=True,
        )
        return _image_info(manifest)

    def delete_image(self, name: str) -> None:
        self.images.delete(name)

    def staging_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=".import-upload-", dir=self.images.root))

    # -- VM files -------------------------------------------------------------------------

    def vm_ids(self) -> set[str]:
        return {p.name for p in self.vms_dir.iterdir() if p.is_dir()}

    def create_disk(self, vm_id: str, image: str, disk_mib: int) -> None:
        manifest = self.images.get(image)
        paths = self._paths(vm_id)
        paths.create()
        free_mib = shutil.disk_usage(self.data_dir).free // (1024 * 1024)
        if manifest.disk is not None:
            base = self.images.path(image) / manifest.disk.path
            base_size = disks.qemu_img_info(base, manifest.disk_format or "raw").virtual_size
            base_mib = -(-base_size // (1024 * 1024))
            if disk_mib < base_mib:
                raise InsufficientResources(
                    f"image '{image}' has a {base_mib} MiB disk; the VM's disk cannot be smaller",
                    hint=f"ask for --disk {base_mib}M or more",
                )
            disks.create_overlay(paths.disk, base, manifest.disk_format or "raw", disk_mib)
        else:
            if disk_mib > free_mib:
                raise InsufficientResources(
                    f"the disk asked for ({disk_mib} MiB) is larger than the free space in "
                    f"{self.data_dir} ({free_mib} MiB)",
                    hint="ask for a smaller --disk or free space on the host",
                )
            disks.create_blank(paths.disk, disk_mib)
        if manifest.firmware == "uefi":
            # The VM's own copy of the UEFI variable store: its boot entries are its own.
            if not OVMF_VARS_TEMPLATE.is_file():
                raise OperationFailed(f"image '{image}' boots with UEFI, but {OVMF_VARS_TEMPLATE} is missing",
                                      hint="install OVMF: scripts/install-system-packages.sh (package ovmf)")
            shutil.copyfile(OVMF_VARS_TEMPLATE, paths.efi_vars)

    def destroy_vm(self, vm_id: str) -> None:
        self.kill_vm(vm_id)
        watcher = self._watchers.pop(vm_id, None)
        if watcher is not None:
            watcher[0].cancel()
        self._release(vm_id)
        shutil.rmtree(self._paths(vm_id).root, ignore_errors=True)
        self._names.pop(vm_id, None)
        self._launches.pop(vm_id, None)
        self._ready.discard(vm_id)
        self._stopping.discard(vm_id)

    def read_log(self, vm_id: str, offset: int = 0, limit: int = 1 << 20) -> tuple[bytes, int]:
        return serial.read_from(self._paths(vm_id).serial_log, offset, limit)

    def console_socket(self, vm_id: str) -> Path:
        return self._paths(vm_id).console_sock

    # -- VM processes ---------------------------------------------------------------------

    def on_exit(self, handler: ExitHandler) -> None:
        self._exit_handlers.append(handler)

    def launch_plan(self, vm_id: str, spec: VMSpec, tap_fds: list[int] | None = None) -> LaunchPlan:
        """Resolve a spec to host paths; public so that the boot benchmark can reuse it."""
        manifest = self.images.get(spec.image)
        image_dir = self.images.path(spec.image)
        accel = self._accel if spec.accel == "auto" else accel_mod.detect(spec.accel)[0]
        kernel = image_dir / manifest.kernel.path if manifest.kernel else None
        return LaunchPlan(
            name=spec.name,
            cpus=spec.cpus,
            memory_mib=spec.boot_memory_mib,
            kernel=kernel,
            machine="q35" if manifest.machine == "q35" else "microvm",
            firmware="uefi" if manifest.firmware == "uefi" else ("bios" if manifest.firmware else None),
            initrd=image_dir / manifest.initrd.path if manifest.initrd else None,
            kernel_is_elf=kernel is not None and kernel_kind(kernel) == "elf",
            paths=self._paths(vm_id),
            accel=accel,
            nics=self._nics(vm_id, tap_fds),
            image_kernel_args=manifest.kernel_args,
            user_kernel_args=spec.kernel_args,
            tsc_khz=self._tsc_khz,
            disk_iops=spec.disk_iops,
            disk_bps=spec.disk_bps,
            qemu_binary=self._qemu,
        )

    def _nics(self, vm_id: str, tap_fds: list[int] | None = None) -> tuple[NicPlan, ...]:
        """Its taps on virtpool networks, else one NIC on the default network (passt)."""
        taps = self._net_plan.taps_of(vm_id) if self._net_plan else []
        if taps:
            fds: list[int | None] = list(tap_fds) if tap_fds else [None] * len(taps)
            return tuple(NicPlan(tap=t.name, mac=t.mac, fd=fd) for t, fd in zip(taps, fds))
        return (NicPlan(socket=self._paths(vm_id).passt_sock),)

    def _open_taps(self, vm_id: str) -> list[int]:
        """As root: descriptors on the VM's taps, for its QEMU to inherit (tap.py says why)."""
        if not users.running_as_root() or self._net_plan is None:
            return []
        fds: list[int] = []
        try:
            for tap in self._net_plan.taps_of(vm_id):
                fds.append(open_tap(tap.name))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    # -- networks -------------------------------------------------------------------------

    def converge_networks(self, desired: HostNetworkInput) -> None:
        with self._net_lock:
            plan = host_plan(desired, self.net_prefix, self._uid_of_slot)
            if plan == self._net_plan:
                return
            if not plan.bridges and not users.running_as_root():
                self._net_plan = plan  # nothing to make, and no rights to look: nothing to do
                return
            self._networks.converge(plan)
            self._net_plan = plan

    def _uid_of_slot(self, slot: int) -> int | None:
        return self._uids.range.user(slot).uid if self._uids is not None else None

    def start_vm(self, vm_id: str, spec: VMSpec, slot: int) -> int:
        paths = self._paths(vm_id)
        if not paths.disk.exists():
            raise NotFound(f"VM '{spec.name}' has no disk on this host ({paths.disk})")
        if self._process(vm_id) is not None:
            raise OperationFailed(f"VM '{spec.name}' already has a QEMU process")
        self._names[vm_id] = spec.name
        self._launches[vm_id] = (spec, slot, DEFAULT_REBOOT_WAIT_S)
        self._ready.discard(vm_id)
        self._stopping.discard(vm_id)
        process.remove_stale_files([*paths.sockets(), paths.passt_sock, paths.pidfile, paths.qemu_log])
        user = self._confine_files(vm_id, slot)
        tap_fds = self._open_taps(vm_id)
        argv = build_argv(self.launch_plan(vm_id, spec, tap_fds))
        network = passt.passt_argv(paths.passt_sock, paths.passt_pidfile, paths.passt_log, tuple(spec.ports))
        popen_kwargs: dict[str, Any] = {}
        if user is not None:  # QEMU and its passt both run as the VM's user, without capabilities
            argv, network = users.confined_argv(user, argv), users.confined_argv(user, network)
            popen_kwargs = {"umask": users.QEMU_UMASK}
        try:
            if not tap_fds and any(nic.socket for nic in self._nics(vm_id)):
                passt.start(network, vm=spec.name, **popen_kwargs)
            group = self._cgroup_for(vm_id, spec)
            popen = process.spawn(argv, paths.qemu_log, vm=spec.name, pass_fds=tuple(tap_fds),
                                  **popen_kwargs)
            self._popens[popen.pid] = popen
            self._procs[vm_id] = psutil.Process(popen.pid)
            # Into its cgroup at once, milliseconds after exec and before it loads the guest:
            # what it allocated until then (its libraries) is charged to the agent.
            if group is not None:
                group.attach(popen.pid)
            self._run(self._wait_monitor(vm_id, popen))
            self._run(self._configure_balloon(vm_id, spec))
            self._watch(vm_id)
        except BaseException:
            self.kill_vm(vm_id)
            self._release(vm_id)
            raise
        finally:
            for fd in tap_fds:
                os.close(fd)  # QEMU holds its own copies
        return popen.pid

    def _confine_files(self, vm_id: str, slot: int) -> users.VMUser | None:
        """As root: give the VM's run dir and disk to its own user, the user QEMU runs as."""
        if self._uids is None:
            return None
        user = self._uids.range.user(slot)
        users.check_unclaimed(user)
        paths = self._paths(vm_id)
        users.own_run_dir(paths.root, user)
        users.own_disk(paths.disk, user)
        if paths.efi_vars.exists():
            users.own_disk(paths.efi_vars, user)  # OVMF writes its boot entries there
        users.check_reachable(paths.disk, user)
        return user

    def _cgroup_for(self, vm_id: str, spec: VMSpec) -> cgroups.VMCgroup | None:
        if not self._cgroups:
            return None
        group = cgroups.create(vm_id)
        group.set_cpu_weight(spec.cpu_weight)
        group.set_cpu_cap(spec.cpu_cap_pct)
        group.set_cpus(spec.cpu_affinity)
        group.set_memory_limit((spec.boot_memory_mib + QEMU_OVERHEAD_MIB) * MIB)
        return group

    async def _wait_monitor(self, vm_id: str, popen: subprocess.Popen[bytes]) -> None:
        """Until QEMU's monitor answers (it is set up), or QEMU exits and its log says why."""
        paths, label = self._paths(vm_id), self._label(vm_id)
        deadline = self._loop.time() + MONITOR_TIMEOUT_S
        while True:
            if popen.poll() is not None:
                said = serial.tail(paths.qemu_log)
                if popen.returncode < 0:  # not a refusal: something killed it
                    raise OperationFailed(f"QEMU of VM '{label}' {_how_it_ended(popen)} while it started"
                                          + (f"; it said: {said}" if said else ""))
                raise OperationFailed(f"QEMU refused to start VM '{label}': {said or _how_it_ended(popen)}")
            try:
                await asyncio.wait_for(qmp.command(paths.qmp_sock, "query-status", vm=label), 1.0)
                return
            except (OperationFailed, asyncio.TimeoutError):
                if self._loop.time() > deadline:
                    raise OperationFailed(f"QEMU of VM '{label}' did not set up in {MONITOR_TIMEOUT_S:g}s") from None
                await asyncio.sleep(0.02)

    def _release(self, vm_id: str, proc: psutil.Process | None = None, *, keep_cgroup: bool = False) -> None:
        """After a QEMU of the VM has exited: reap it if it was our child, remove its cgroup."""
        proc = proc or self._procs.get(vm_id)
        if proc is not None:
            popen = self._popens.pop(proc.pid, None)
            if popen is not None:
                popen.wait()
            if self._procs.get(vm_id) == proc:
                self._procs.pop(vm_id, None)
        if not keep_cgroup:
            # It exits with its QEMU (--one-off); this is for a QEMU that never connected.
            passt.stop(self._paths(vm_id).passt_pidfile)
        if self._cgroups and not keep_cgroup:
            try:
                cgroups.vm_cgroup(vm_id).remove()
            except OperationFailed:
                log.warning("cgroup of VM %s could not be removed yet", vm_id)

    async def _configure_balloon(self, vm_id: str, spec: VMSpec) -> None:
        # The guest boots with its ceiling and the balloon takes it down to what it was given;
        # the target is held by the device, so the guest driver applies it whenever it loads.
        sock, label = self._paths(vm_id).qmp_sock, self._label(vm_id)
        await qmp.command(sock, "qom-set", {"path": BALLOON_PATH, "property":
                          "guest-stats-polling-interval", "value": BALLOON_STATS_INTERVAL_S}, vm=label)
        if spec.memory_mib < spec.boot_memory_mib:
            await qmp.command(sock, "balloon", {"value": spec.memory_mib * MIB}, vm=label)

    def wait_ready(self, vm_id: str, timeout: float) -> None:
        self._run(self._wait_ready(vm_id, timeout))

    async def _wait_ready(self, vm_id: str, timeout: float) -> None:
        paths = self._paths(vm_id)
        deadline = self._loop.time() + timeout
        started = self._procs.get(vm_id)
        popen = self._popens.get(started.pid) if started is not None else None
        while True:
            if self._process(vm_id) is None:
                raise OperationFailed(
                    f"QEMU of VM '{self._label(vm_id)}' {_how_it_ended(popen)} while the guest booted; "
                    f"the console said:\n{serial.tail(paths.serial_log) or '(empty)'}",
                    hint="check the image and the kernel arguments",
                )
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise BootTimeout(
                    f"VM '{self._label(vm_id)}' did not answer its guest agent within "
                    f"{timeout:g}s; the console said:\n{serial.tail(paths.serial_log)}",
                    hint="the image must run qemu-guest-agent; see `virtpool vm logs`",
                )
            try:
                async with self._qga_lock(vm_id):
                    agent = await GuestAgent.open(
                        paths.qga_sock, vm=self._label(vm_id), sync_timeout=min(1.0, remaining)
                    )
                    await agent.close()
                self._ready.add(vm_id)
                spec_slot = self._launches.get(vm_id)
                if spec_slot is not None:  # a reboot waits as long as this boot was allowed
                    self._launches[vm_id] = (spec_slot[0], spec_slot[1], timeout)
                return
            except GuestAgentError:
                await asyncio.sleep(READY_POLL_S)

    def _reboot_wanted(self, vm_id: str) -> bool:
        """A guest reset is a reboot to carry out when the guest had booted (a reset before
        that is a boot that failed, e.g. a kernel panic) and nobody is stopping the VM."""
        return vm_id in self._ready and vm_id not in self._stopping and vm_id in self._launches

    def _reboot(self, vm_id: str) -> None:
        """Start the VM again after the guest rebooted, as its hardware would have."""
        spec, slot, timeout = self._launches[vm_id]
        log.info("VM %s rebooted itself; starting it again", spec.name)
        self.start_vm(vm_id, spec, slot)
        self._launches[vm_id] = (spec, slot, timeout)

        async def until_ready() -> None:
            try:
                await self._wait_ready(vm_id, timeout)
            except OperationFailed as err:
                log.warning("VM %s did not come back from its reboot: %s", spec.name, err.message)

        self._submit(until_ready())

    def _qga_lock(self, vm_id: str) -> asyncio.Lock:
        # QGA serves one client at a time: callers on the same VM take turns.
        return self._qga_locks.setdefault(vm_id, asyncio.Lock())

    def stop_vm(self, vm_id: str, timeout: float) -> StopMethod | None:
        proc = self._process(vm_id)
        if proc is None:
            return None
        self._stopping.add(vm_id)  # a guest reset on the way down is no reboot to carry out
        deadline = time.monotonic() + timeout
        paths, label = self._paths(vm_id), self._label(vm_id)
        status = self._run(qmp.command(paths.qmp_sock, "query-status", vm=label))
        if status.get("status") == "paused":
            self._run(qmp.command(paths.qmp_sock, "cont", vm=label))
        try:
            self._run(self._ask_agent_to_stop(vm_id), timeout=QMP_CONNECT_TIMEOUT_S + 10)
        except GuestAgentError as err:
            log.info("VM %s: %s; pressing the ACPI power button", label, err.message)
        else:
            # The agent took it: most of the time is the guest's; the rest goes to ACPI.
            if process.wait_gone(proc, max(0.0, deadline - time.monotonic()) * ACPI_SHARE_AFTER_AGENT):
                return "guest-agent"
        try:
            self._run(qmp.command(paths.qmp_sock, "system_powerdown", vm=label))
        except OperationFailed:
            pass  # QEMU went away meanwhile: the wait below says so
        if process.wait_gone(proc, max(0.0, deadline - time.monotonic())):
            return "acpi"
        self.kill_vm(vm_id)
        return "killed"

    async def _ask_agent_to_stop(self, vm_id: str) -> None:
        """Raises GuestAgentError when there is no agent or it refused."""
        async with self._qga_lock(vm_id):
            async with await GuestAgent.open(self._paths(vm_id).qga_sock, vm=self._label(vm_id)) as agent:
                await agent.shutdown()

    def kill_vm(self, vm_id: str) -> None:
        proc = self._process(vm_id)
        if proc is None:
            return
        self._stopping.add(vm_id)
        try:
            self._run(qmp.command(self._paths(vm_id).qmp_sock, "quit", vm=self._label(vm_id)), timeout=5)
        except (OperationFailed, TimeoutError):
            pass
        if not process.wait_gone(proc, HARD_STOP_GRACE_S):
            process.kill(proc)

    def pause_vm(self, vm_id: str) -> None:
        self._run(qmp.command(self._paths(vm_id).qmp_sock, "stop", vm=self._label(vm_id)))

    def resume_vm(self, vm_id: str) -> None:
        self._run(qmp.command(self._paths(vm_id).qmp_sock, "cont", vm=self._label(vm_id)))

    def exec_vm(
        self, vm_id: str, argv: list[str], timeout: float, stdin: bytes | None = None
    ) -> ExecResult:
        return self._run(self._exec(vm_id, argv, timeout, stdin))

    async def _exec(
        self, vm_id: str, argv: list[str], timeout: float, stdin: bytes | None
    ) -> ExecResult:
        proc = self._process(vm_id)
        try:
            async with self._qga_lock(vm_id):
                agent = await GuestAgent.open(self._paths(vm_id).qga_sock, vm=self._label(vm_id))
                async with agent:
                    return await agent.exec(argv, timeout=timeout, stdin=stdin)
        except GuestAgentGone as err:
            # The channel broke: when QEMU went away meanwhile, that is the VM stopping, not
            # a fault of the command (the watcher records the exit itself).
            if proc is None or await asyncio.to_thread(process.wait_gone, proc, 2.0):
                raise Conflict(f"VM '{self._label(vm_id)}' stopped while the command ran: its QEMU exited",
                               hint=f"start it again (virtpool vm start {self._label(vm_id)}) and retry") from err
            raise

    def adopt_vm(self, vm_id: str, name: str) -> str | None:
        paths = self._paths(vm_id)
        self._names[vm_id] = name
        if self._process(vm_id) is None:
            # A QEMU whose pidfile was removed by its user must still be found after a restart.
            proc = process.scan(paths.pidfile)
            if proc is None:
                return None
            self._procs[vm_id] = proc
        try:
            tampered = [f"{p.name} is {safe_files.describe(os.lstat(p).st_mode)}"
                        for p in paths.sockets() if not _is_socket(p)]
            if tampered:
                raise safe_files.UnsafeFile("; ".join(tampered))
            status = self._run(qmp.command(paths.qmp_sock, "query-status", vm=name))
        except OperationFailed as err:
            # Its sockets were replaced (by its QEMU's user) or it does not answer: a QEMU
            # that cannot be controlled is stopped, not left running unwatched.
            log.warning("stopping VM %s: its QEMU cannot be re-adopted: %s", name, err.message)
            self.kill_vm(vm_id)
            self._release(vm_id)
            return None
        self._ready.add(vm_id)  # it ran before this agent started: it had booted
        self._watch(vm_id)
        return "paused" if status.get("status") == "paused" else "running"

    # -- watching -------------------------------------------------------------------------

    def _watch(self, vm_id: str) -> None:
        proc = self._process(vm_id)
        if proc is None:
            return
        old = self._watchers.get(vm_id)
        if old is not None and not old[0].done() and old[1] == proc:
            return
        self._watchers[vm_id] = (self._submit(self._watch_until_exit(vm_id, proc)), proc)

    async def _watch_until_exit(self, vm_id: str, proc: psutil.Process) -> None:
        """Watch one QEMU process of the VM (a restart starts a new watcher for the next)."""
        paths = self._paths(vm_id)
        guest_initiated = reset = False

        def on_event(name: str, data: Any) -> None:
            nonlocal guest_initiated, reset
            if name == "SHUTDOWN" and data.get("guest"):
                # -no-reboot turns the guest's reboot into an exit with this reason.
                if data.get("reason") == "guest-reset":
                    reset = True
                else:
                    guest_initiated = True

        while True:
            guest_initiated = reset = False
            try:
                await qmp.watch(
                    paths.events_sock, on_event, vm=self._label(vm_id),
                    connect_timeout=QMP_CONNECT_TIMEOUT_S,
                )
            except OperationFailed:
                pass
            # The monitor closes as QEMU exits (see process.wait_gone for why not the pidfile).
            if await asyncio.to_thread(process.wait_gone, proc, 2.0):
                break
        current = self._watchers.get(vm_id)
        if current is not None and current[1] == proc:
            del self._watchers[vm_id]
        superseded = self._process(vm_id) is not None  # a newer QEMU of this VM already runs
        await asyncio.to_thread(self._release, vm_id, proc, keep_cgroup=superseded)
        if superseded:
            return  # the end of an older process is no news about the VM
        if reset and self._reboot_wanted(vm_id):
            try:
                await asyncio.to_thread(self._reboot, vm_id)
                return  # the VM lives on in a new QEMU: nothing to tell the control plane
            except Exception:
                log.exception("VM %s rebooted but could not be started again", vm_id)
        for handler in self._exit_handlers:
            try:
                await asyncio.to_thread(handler, vm_id, guest_initiated)
            except Exception:  # a handler's bug must not kill the watcher loop
                log.exception("exit handler failed for VM %s", vm_id)

    async def _housekeeping_forever(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            for vm_id in list(self._watchers):
                try:
                    await asyncio.to_thread(self._housekeep, vm_id)
                except Exception:  # one VM going away mid-pass must not stop the others' care
                    log.exception("housekeeping of VM %s failed", vm_id)

    def _housekeep(self, vm_id: str) -> None:
        try:
            serial.trim(self._paths(vm_id).serial_log, self._log_cap)
        except safe_files.UnsafeFile as err:  # planted by the VM's user: said once, then left
            if vm_id not in self._unsafe_logs:
                self._unsafe_logs.add(vm_id)
                log.warning("not trimming the serial log of VM %s: %s", self._label(vm_id), err.message)
        self._sample_cpu(vm_id)

    def _sample_cpu(self, vm_id: str) -> None:
        cpu_s = self._cpu_seconds(vm_id)
        if cpu_s is None:
            return
        samples = self._cpu_samples.setdefault(vm_id, deque(maxlen=2))
        samples.append((time.monotonic(), cpu_s))

    def _cpu_seconds(self, vm_id: str) -> float | None:
        if self._cgroups:
            group = cgroups.vm_cgroup(vm_id)
            if group.exists():
                return group.usage().cpu_time_ns / 1e9
        proc = self._process(vm_id)
        if proc is None:
            return None
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            return None
        return times.user + times.system

    # -- live resources -------------------------------------------------------------------

    def apply_live(self, vm_id: str, changes: LiveChanges) -> None:
        # QMP first: it is what fails in practice (a VM that went away, a disk that cannot
        # grow), and the control plane then restores its record; the cgroup writes below take
        # values the model has already validated.
        self._run(self._apply_live(vm_id, changes))
        if self._cgroups and {"cpu_cap_pct", "cpu_weight", "cpu_affinity"} & changes.model_fields_set:
            group = cgroups.vm_cgroup(vm_id)
            if "cpu_weight" in changes.model_fields_set and changes.cpu_weight is not None:
                group.set_cpu_weight(changes.cpu_weight)
            if "cpu_cap_pct" in changes.model_fields_set:
                group.set_cpu_cap(changes.cpu_cap_pct or None)
            if "cpu_affinity" in changes.model_fields_set:
                group.set_cpus(changes.cpu_affinity or None)

    async def _apply_live(self, vm_id: str, changes: LiveChanges) -> None:
        sock, label = self._paths(vm_id).qmp_sock, self._label(vm_id)
        if changes.balloon_mib is not None:
            await qmp.command(sock, "balloon", {"value": changes.balloon_mib * MIB}, vm=label)
        if changes.throttle is not None:
            iops, bps = changes.throttle
            await qmp.command(sock, "block_set_io_throttle", {
                "id": DISK_DEVICE_ID, "iops": iops, "bps": bps,
                "iops_rd": 0, "iops_wr": 0, "bps_rd": 0, "bps_wr": 0}, vm=label)
        if changes.disk_mib is not None:
            await qmp.command(sock, "block_resize", {"device": DRIVE_ID, "size": changes.disk_mib * MIB},
                              vm=label)

    def resize_disk_offline(self, vm_id: str, disk_mib: int) -> None:
        disks.grow(self._paths(vm_id).disk, disk_mib, **self._as_disk_owner(vm_id))

    def _as_disk_owner(self, vm_id: str) -> dict[str, Any]:
        """Popen arguments that run a tool on the VM's disk as the disk's owner (its VM's user):
        whatever its header names is then opened with no more rights than the VM has."""
        if users.running_as_root():
            owner = os.lstat(self._paths(vm_id).disk).st_uid
            if owner != 0:
                return users.spawn_kwargs(owner, owner)
        return {}

    # -- clones ---------------------------------------------------------------------------

    def clone_disk(self, source_vm_id: str, vm_id: str, *, image: str, snapshot: str | None) -> None:
        source, disk = self._paths(source_vm_id).disk, self._paths(vm_id).disk
        manifest = self.images.get(image)
        base = self.images.path(image) / manifest.disk.path if manifest.disk else None
        owner = self._as_disk_owner(source_vm_id)
        # The source's header is its VM's to rewrite: it may name only the image's own disk.
        info = json.loads(disks.run_qemu_img(["info", "-U", "--output=json", "-f", "qcow2", str(source)],
                                             what="inspect the source disk", **owner))
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        data_file = (info.get("format-specific") or {}).get("data", {}).get("data-file")
        if data_file or (backing or None) != (str(base) if base else None):
            raise OperationFailed(f"the disk of the source VM names {backing or data_file!r}, not its "
                                  "image's disk; refusing to copy it")
        copy = disk.with_name(".clone.qcow2")
        args = ["convert", "-q", "-f", "qcow2", "-O", "qcow2"]
        if snapshot is not None:
            args += ["-U", "-l", f"snapshot.name={snapshot}"]  # a snapshot does not change
        disks.run_qemu_img([*args, str(source), str(copy)], what="copy the source disk")
        os.replace(copy, disk)

    # -- backups --------------------------------------------------------------------------

    def backup_vm(self, vm_id: str, target: str, *, incremental: bool, vm: str, image: str) -> BackupInfo:
        paths = self._paths(vm_id)
        if self._process(vm_id) is None:
            raise Conflict(f"VM '{vm}' is not running; backups are taken while the guest runs",
                           hint=f"start it: virtpool vm start {vm}")
        return self._run(backups.backup(paths.qmp_sock, Path(target), vm_id=vm_id, vm=vm, image=image,
                                        incremental=incremental))

    def read_backup(self, source: str) -> BackupInfo:
        return backups.read_chain(Path(source))

    def restore_backup(self, vm_id: str, source: str) -> None:
        backups.restore(Path(source), self._paths(vm_id).disk, **self._as_disk_owner(vm_id))

    # -- snapshots ------------------------------------------------------------------------

    def list_snapshots(self, vm_id: str) -> list[SnapshotInfo]:
        return snapshots.list_snapshots(self._paths(vm_id).disk, **self._as_disk_owner(vm_id))

    def create_snapshot(self, vm_id: str, name: str, *, memory: bool) -> SnapshotInfo:
        paths, label = self._paths(vm_id), self._label(vm_id)
        if self._process(vm_id) is None:
            snapshots.create_offline(paths.disk, name, **self._as_disk_owner(vm_id))
        else:
            self._run(snapshots.create_live(paths.qmp_sock, paths.qga_sock, name, memory=memory,
                                            vm=label, qga_lock=self._qga_lock(vm_id)))
        return next(s for s in self.list_snapshots(vm_id) if s.name == name)

    def restore_snapshot(self, vm_id: str, name: str) -> None:
        paths = self._paths(vm_id)
        if self._process(vm_id) is None:
            snapshots.restore_offline(paths.disk, name, **self._as_disk_owner(vm_id))
        else:
            self._run(snapshots.restore_live(paths.qmp_sock, name, vm=self._label(vm_id)))

    def delete_snapshot(self, vm_id: str, name: str) -> None:
        paths = self._paths(vm_id)
        if self._process(vm_id) is None:
            snapshots.delete_offline(paths.disk, name, **self._as_disk_owner(vm_id))
        else:
            self._run(snapshots.delete_live(paths.qmp_sock, name, vm=self._label(vm_id)))

    def vm_stats(self, vm_id: str) -> dict[str, Any]:
        """Figures for ``VMStats``: CPU from the process accounting, the rest from QMP."""
        figures: dict[str, Any] = {}
        proc = self._process(vm_id)
        if proc is None:
            return figures
        samples = self._cpu_samples.get(vm_id)
        cpu_s = self._cpu_seconds(vm_id)
        figures["cpu_time_s"] = cpu_s
        if samples and cpu_s is not None:
            then, then_cpu = samples[0]
            elapsed = time.monotonic() - then
            if elapsed > 0.2:
                figures["cpu_percent"] = round(100 * (cpu_s - then_cpu) / elapsed, 1)
        try:
            figures["qemu_rss_mib"] = round(proc.memory_info().rss / MIB, 1)
        except psutil.NoSuchProcess:
            return figures
        figures.update(self._run(self._qmp_stats(vm_id), timeout=QMP_CONNECT_TIMEOUT_S))
        return figures

    async def _qmp_stats(self, vm_id: str) -> dict[str, Any]:
        sock, label = self._paths(vm_id).qmp_sock, self._label(vm_id)
        figures: dict[str, Any] = {}
        balloon = await qmp.command(sock, "query-balloon", vm=label)
        figures["balloon_mib"] = round(balloon["actual"] / MIB, 1)
        guest = await qmp.command(sock, "qom-get", {"path": BALLOON_PATH, "property": "guest-stats"},
                                  vm=label)
        stats = guest.get("stats", {})
        if guest.get("last-update"):
            for key, field in (("stat-total-memory", "guest_total_mib"),
                               ("stat-free-memory", "guest_free_mib")):
                if stats.get(key, -1) >= 0:
                    figures[field] = round(stats[key] / MIB, 1)
        for device in await qmp.command(sock, "query-blockstats", vm=label):
            if device.get("device") == DRIVE_ID:
                block = device["stats"]
                figures.update(disk_read_bytes=block["rd_bytes"], disk_written_bytes=block["wr_bytes"],
                               disk_read_ops=block["rd_operations"], disk_write_ops=block["wr_operations"])
        return figures


def _how_it_ended(popen: subprocess.Popen[bytes] | None) -> str:
    """'was killed by signal 9 (SIGKILL)', 'exited with code 1', or 'exited' (not our child)."""
    code = popen.poll() if popen is not None else None
    if code is None:
        return "exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _image_info(manifest: Manifest) -> ImageInfo:
    def entry(f: Any) -> ImageFile | None:
        return ImageFile(path=f.path, sha256=f.sha256, size=f.size) if f else None

    return ImageInfo(
        name=manifest.name,
        kernel=entry(manifest.kernel),
        machine=manifest.machine,
        firmware=manifest.firmware,
        initrd=entry(manifest.initrd),
        disk=entry(manifest.disk),
        disk_format=manifest.disk_format,
        kernel_args=manifest.kernel_args,
        boot_timeout_s=manifest.boot_timeout_s,
        size=manifest.size(),
        created_at=manifest.created_at,
        source=manifest.source,
    )


_qemu_versions: dict[str, str] = {}


def _qemu_version(binary: str) -> str:
    if binary not in _qemu_versions:
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
            _qemu_versions[binary] = out.stdout.splitlines()[0] if out.stdout else "unknown"
        except (OSError, subprocess.TimeoutExpired):
            _qemu_versions[binary] = "not installed"
    return _qemu_versions[binary]
