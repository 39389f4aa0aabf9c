"""The agent of one host: the contract of ``virtpool.model.agent.Agent`` over this host's parts.

A thin façade. Each VM is a ``node.vm.VM`` (paths, process, QMP session, watcher, run state);
launches are resolved by the pure ``node.launch``; images by ``node.images.store``; disks by
``node.disks``; confinement by ``node.sandbox``; what VMs do on their own is appended to the
persisted ``node.events.EventFeed``. Everything the agent needs after a restart is on disk
(pidfiles, sockets, the event feed) or in the control plane's database.

Async work runs on one event loop in a thread of the agent's own, so that blocking callers
(API worker threads, the agent service's handlers) can use it without an event loop of theirs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import psutil

from virtpool.model.agent import ByteStream, Console, Progress, RunStatus
from virtpool.model.errors import (
    FREE_SPACE_HINT,
    Conflict,
    InsufficientResources,
    InsufficientStorage,
    NotFound,
    OperationFailed,
)
from virtpool.model.backup import BackupInfo
from virtpool.model.cloudinit import CloudInit
from virtpool.model.image import Firmware, ImageInfo
from virtpool.model.net_change import Change
from virtpool.model.network import HostNetworkInput
from virtpool.model.snapshot import CloneKind, SnapshotInfo
from virtpool.model.spec import Accel, ExecOutput, ExecResult, HostInfo, LiveChanges, VMSpec
from virtpool.model.vm import StopMethod, VMUsage
from virtpool.node import backups, cloudinit, disks, launch, safe_files, serial, snapshots
from virtpool.node.console import CrossLoopConsole
from virtpool.node.events import EventFeed
from virtpool.node.images.catalog import ImageCatalog
from virtpool.node.images.store import kernel_kind, no_room
from virtpool.node.bases import BaseStore
from virtpool.node.launches import Launch, LaunchRecords
from virtpool.node.warm import WarmCopies
from virtpool.node.net import guard, passt
from virtpool.node.net.apply import NetworkApplier
from virtpool.node.net.plan import HostPlan, host_plan
from virtpool.node.net.counters import NicCounters, guest_counters, tap_counters
from virtpool.node.net.tap import open_tap
from virtpool.node.qemu import accel as accel_mod
from virtpool.node.qemu.argv import (
    BALLOON_ID,
    DISK_DEVICE_ID,
    DRIVE_ID,
    OVMF_VARS_TEMPLATE,
    LaunchPlan,
    NicPlan,
    build_argv,
)
from virtpool.node.qemu.guest_agent import GuestAgentError
from virtpool.node.sandbox import cgroups, uid_ranges, users
from virtpool.node.vm import KILLED_EXIT_S, READY_POLL_S, VM, Runstate, StateError
from virtpool.node.vmdir import VMPaths

__all__ = ["READY_POLL_S", "LocalAgent"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Log trimming and CPU sampling; a guest flooding its console at full speed writes ~1 MB/s
# under TCG, so a second is what the log may overshoot its cap by.
HOUSEKEEPING_INTERVAL_S = 1.0
# The default network's counters come from the guest agent: asked in the background this often
# (under the control plane's 5 s sampling), and given this long, as a TCG guest on a busy host
# answers slowly; a stats call reads the last answer instead of waiting for the guest.
GUEST_NET_REFRESH_S = 4.0
GUEST_NET_ANSWER_S = 5.0
FIRST_GUEST_NET_ANSWER_S = 2.0
# Free space on a VM's disk's filesystem before a guest an ENOSPC paused is resumed: enough
# that it does not fill it again at once (a guest writing on pauses again, and is resumed again).
RESUME_FREE_BYTES = 64 * 1024 * 1024
# Charged to a VM's memory cgroup beyond its guest RAM: TCG's translation cache (capped at
# 64 MiB), QEMU's heap and the pages of the kernel it loads; measured ~80 MiB anonymous and
# ~74 MiB reclaimable file pages for a 256 MiB guest.
QEMU_OVERHEAD_MIB = 128
BALLOON_STATS_INTERVAL_S = 2  # how often the guest's balloon driver reports its free memory
BALLOON_PATH = f"/machine/peripheral/{BALLOON_ID}"
MIB = 1024 * 1024
CALL_TIMEOUT_S = 30.0  # a QMP round trip on the agent's loop, with room for a busy machine
# After the guest agent took a shutdown, the share of the stop timeout the guest gets before
# the ACPI power button is pressed as well (a guest whose agent said yes usually is on its way).
ACPI_REPRESS_S = 15.0  # between presses of the power button during a graceful stop
ACPI_SHARE_AFTER_AGENT = 0.7
# Room a memory snapshot leaves in the data dir beyond the guest's RAM (device state, and the
# running guests' own writes, which would pause them on ENOSPC).
MEMORY_SNAPSHOT_MARGIN_MIB = 64
DEFAULT_REBOOT_WAIT_S = 60.0  # for the guest agent after a reboot, unless its boot said more


class InputPull:
    """A command's streamed input, read from its byte stream on a thread of its own and taken
    without blocking on the agent's loop. A few chunks are held at most: beyond that the
    reader waits, and so does whoever writes the stream (backpressure to the user's pipe)."""

    DEPTH = 8

    def __init__(self, chunks: ByteStream) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.DEPTH)
        self._stopped = threading.Event()
        self._ended = False
        threading.Thread(target=self._read, args=(chunks,), name="exec-input", daemon=True).start()

    def _read(self, chunks: ByteStream) -> None:
        try:
            for chunk in chunks:
                while chunk and not self._stopped.is_set():
                    try:
                        self._queue.put(chunk, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._stopped.is_set():
                    return
        except Exception:  # the stream broke (the caller went away): that is its end
            log.info("the input of a command ended with an error", exc_info=True)
        while not self._stopped.is_set():
            try:
                self._queue.put(None, timeout=0.5)
                return
            except queue.Full:
                continue

    def take(self) -> bytes | None:
        """What came since the last take (b"" when nothing yet); None once the input has ended."""
        if self._ended:
            return None
        got = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return b"".join(got)
            if item is None:
                self._ended = True
                return b"".join(got) if got else None
            got.append(item)

    def stop(self) -> None:
        """The command ended: the reader stops at its next chunk."""
        self._stopped.set()


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
        self.catalog = ImageCatalog(data_dir / "images")
        self.images = self.catalog.store
        self.vms_dir = data_dir / "vms"
        self.vms_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._accel, self._accel_reason = accel_mod.detect(accel)
        self._tsc_khz = accel_mod.host_tsc_khz()
        self._log_cap = log_cap_bytes
        self._qemu = qemu_binary
        self.feed = EventFeed(data_dir / "events.jsonl")
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
        self._vms: dict[str, VM] = {}
        # How each VM was last started, for reboots from inside a guest (on disk: they must
        # survive a restart of this agent).
        self._launches = LaunchRecords(data_dir / "launches")
        self._bases = BaseStore(data_dir / "bases")
        # VMs started from another VM's memory snapshot, whose guest still has that VM's
        # identity until it is ready and told its own (name by id).
        self._restored: dict[str, str] = {}
        self._bases.sweep(self.vm_ids())
        self._warm = WarmCopies(data_dir / "warm")
        self._cpu_samples: dict[str, deque[tuple[float, float]]] = {}
        # The last network counters each guest agent gave, when, and the asks in flight.
        self._guest_net: dict[str, NicCounters] = {}
        self._guest_net_at: dict[str, float] = {}
        self._guest_net_asks: dict[str, asyncio.Task[None]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agent-loop", daemon=True)
        self._thread.start()
        self._housekeeper = self._submit(self._housekeeping_forever())

    # -- plumbing -------------------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = CALL_TIMEOUT_S) -> T:
        return self._submit(coro).result(timeout)

    def _paths(self, vm_id: str) -> VMPaths:
        return VMPaths(self.vms_dir / vm_id)

    def _vm(self, vm_id: str, name: str | None = None) -> VM:
        """The VM's object, made on first use (only on the loop, so never twice)."""
        vm = self._vms.get(vm_id)
        if vm is None:
            vm = VM(vm_id, self._paths(vm_id), name or vm_id,
                    notify=lambda kind, data: self.feed.append(kind, vm_id, data),  # type: ignore[arg-type]
                    on_gone=self._release, reboot=self._reboot, log_cap=self._log_cap)
            self._vms[vm_id] = vm
        elif name is not None:
            vm.name = name
        return vm

    async def _on_loop(self, vm_id: str, name: str | None = None) -> VM:
        return self._vm(vm_id, name)

    def close(self) -> None:
        """Stop watching; the VMs themselves keep running."""

        async def detach_all() -> None:
            self._housekeeper.cancel()
            asks = list(self._guest_net_asks.values())
            for task in asks:
                task.cancel()
            await asyncio.gather(*asks, return_exceptions=True)
            for vm in list(self._vms.values()):
                await vm.detach()

        try:
            self._run(detach_all(), timeout=10)
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
            memory_mib=psutil.virtual_memory().total // MIB,
            disk_total_mib=usage.total // MIB,
            disk_free_mib=usage.free // MIB,
            accel=self._accel,
            accel_reason=self._accel_reason,
            qemu_version=_qemu_version(self._qemu),
            data_dir=str(self.data_dir),
            unprivileged_port_start=_unprivileged_port_start(),
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

    def events(self, after: int, wait: float = 0.0) -> list[Any]:
        return self.feed.read(after, wait)

    def running_vm_ids(self) -> list[str]:
        """VMs whose QEMU this agent runs now (for its heartbeat's usage figures)."""
        return [vm.id for vm in list(self._vms.values()) if vm.runstate == Runstate.RUNNING]

    # -- images ---------------------------------------------------------------------------

    # The image half of the contract is the catalog's, over this agent's own image store.

    def list_images(self) -> list[ImageInfo]:
        return self.catalog.list_images()

    def get_image(self, name: str) -> ImageInfo:
        return self.catalog.get_image(name)

    def build_image(self, name: str, progress: Progress | None = None) -> tuple[ImageInfo, bool]:
        return self.catalog.build_image(name, progress)

    def import_image(self, name: str, files: Mapping[str, ByteStream], *, kernel_args: str,
                     firmware: Firmware | None = None) -> ImageInfo:
        return self.catalog.import_image(name, files, kernel_args=kernel_args, firmware=firmware)

    def receive_image(self, info: ImageInfo, files: Mapping[str, ByteStream]) -> ImageInfo:
        return self.catalog.receive_image(info, files)

    def image_file(self, name: str, file: str) -> Iterator[bytes]:
        return self.catalog.image_file(name, file)

    def delete_image(self, name: str) -> None:
        self.catalog.delete_image(name)

    # -- VM files -------------------------------------------------------------------------

    def vm_ids(self) -> set[str]:
        return {p.name for p in self.vms_dir.iterdir() if p.is_dir()}

    def create_disk(self, vm_id: str, image: str, disk_mib: int) -> None:
        manifest = self.images.get(image)
        paths = self._paths(vm_id)
        paths.create()
        free_mib = shutil.disk_usage(self.data_dir).free // MIB
        if manifest.disk is not None:
            base = self.images.path(image) / manifest.disk.path
            base_size = disks.qemu_img_info(base, manifest.disk_format or "raw").virtual_size
            base_mib = -(-base_size // MIB)
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

        async def forget() -> None:
            self._vms.pop(vm_id, None)

        self._run(forget())
        self._release_cgroup(vm_id)
        shutil.rmtree(self._paths(vm_id).root, ignore_errors=True)
        self._launches.drop(vm_id)
        self._bases.release(vm_id)
        self._warm.forget(vm_id)

    def read_log(self, vm_id: str, offset: int = 0, limit: int = 1 << 20) -> tuple[bytes, int]:
        return serial.read_from(self._paths(vm_id).serial_log, offset, limit)

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

    def clone_disk(self, source_vm_id: str, vm_id: str, *, image: str, snapshot: str | None,
                   kind: CloneKind = "full", keep_ready: int = 0) -> None:
        source, disk = self._paths(source_vm_id).disk, self._paths(vm_id).disk
        manifest = self.images.get(image)
        base = self.images.path(image) / manifest.disk.path if manifest.disk else None
        owner = self._as_disk_owner(source_vm_id)
        # The source's header is its VM's to rewrite: it may name only the image's own disk,
        # or the base of a linked clone in this agent's store.
        info = json.loads(disks.run_qemu_img(["info", "-U", "--output=json", "-f", "qcow2", str(source)],
                                             what="inspect the source disk", **owner))
        backing = self._checked_backing(info, base)
        copy = disk.with_name(".clone.qcow2")
        read_snapshot = ["-U", "-l", f"snapshot.name={snapshot}"] if snapshot is not None else []
        if kind == "full":
            disks.run_qemu_img(["convert", "-q", "-f", "qcow2", "-O", "qcow2", *read_snapshot, str(source),
                                str(copy)], what="copy the source disk")
        elif kind == "linked":
            taken = next((s for s in info.get("snapshots") or [] if s["name"] == snapshot), None)
            # One base per snapshot (shared by its clones); a stopped disk changes later: its own.
            key = (f"{source_vm_id}/{snapshot}/{taken['date-sec']}.{taken['date-nsec']}" if taken
                   else f"{source_vm_id}/disk/{vm_id}")
            onto = ["-B", str(base), "-F", manifest.disk_format or "raw"] if base else []

            def write_base(path: Path) -> None:
                # Only the source's own data: what it reads through to the image stays there.
                disks.run_qemu_img(["convert", "-q", "-f", "qcow2", "-O", "qcow2", *read_snapshot, *onto,
                                    str(source), str(path)], what="make the base of a linked clone")

            base_id = self._bases.ensure(key, write_base)
            self._bases.attach(base_id, vm_id)
            disks.create_overlay(copy, self._bases.path(base_id), "qcow2", -(-int(info["virtual-size"]) // MIB))
        else:  # "memory": the snapshot's RAM must be inside the disk QEMU loads it from
            taken = next(s for s in info.get("snapshots") or [] if s["name"] == snapshot)
            key = f"{snapshot}@{taken['date-sec']}.{taken['date-nsec']}"

            def make_copy(path: Path) -> None:
                self._memory_copy(source, path, str(snapshot))

            if not self._warm.take(source_vm_id, key, copy):
                with self._warm.source_lock(source_vm_id):
                    running = self._running(source_vm_id)
                    if running is None:
                        make_copy(copy)
                    else:
                        self._run(self._while_paused(running, lambda: make_copy(copy)), timeout=None)
                        # Whole, as the pause promised; checked, as the copy is all the new VM has.
                        disks.run_qemu_img(["check", "-q", "-f", "qcow2", str(copy)],
                                           what="check the copy of the running VM's disk")
            # What was copied is checked again: the source's user could have swapped it meanwhile.
            copied = json.loads(disks.run_qemu_img(["info", "--output=json", "-f", "qcow2", str(copy)],
                                                   what="inspect the copied disk"))
            backing = self._checked_backing(copied, base)
            if backing is not None and self._bases.holds(backing):
                self._bases.attach(Path(backing).stem, vm_id)
            if keep_ready:
                self._warm.refill(source_vm_id, key, keep_ready, make_copy,
                                  source_idle=lambda: self._running(source_vm_id) is None)
        os.replace(copy, disk)
        if kind == "memory" and snapshot is not None:
            self._launches.restore_at_next_start(vm_id, snapshot)

    def _memory_copy(self, source: Path, target: Path, snapshot: str) -> None:
        """A byte copy of a VM's disk (stopped, or paused: ``_while_paused``) that keeps only
        its snapshot ``snapshot`` and none of the source's backup bitmaps."""
        _copy_regular(source, target)
        info = json.loads(disks.run_qemu_img(["info", "--output=json", "-f", "qcow2", str(target)],
                                             what="inspect the copied disk"))
        snapshots.drop_backup_bitmaps(target, "clear the copy's backup bitmaps")
        for other in info.get("snapshots") or []:
            if other["name"] != snapshot:
                snapshots.delete_offline(target, other["name"])

    async def _while_paused(self, vm: VM, work: Callable[[], None]) -> None:
        """Run ``work`` (a byte copy of the VM's disk) with the guest paused. QEMU's ``stop``
        drains the disk's requests and flushes its qcow2 tables to the file, and writes nothing
        more until ``cont``: for that while the file is whole and still, as a stopped VM's is.
        The guest stands still for the copy (its time is then the copy's)."""
        was_running = await vm.status() == "running"
        if was_running:
            await vm.command("stop")
        try:
            await asyncio.to_thread(work)
        finally:
            if was_running:
                await vm.command("cont")

    def _checked_backing(self, info: dict[str, Any], image_disk: Path | None) -> str | None:
        """The backing file ``qemu-img info`` found, if it is one a VM's disk may have: its
        image's disk, or a base of this store; else OperationFailed."""
        backing = info.get("full-backing-filename") or info.get("backing-filename") or None
        data_file = (info.get("format-specific") or {}).get("data", {}).get("data-file")
        if data_file or not (backing is None or backing == (str(image_disk) if image_disk else None)
                             or self._bases.holds(backing)):
            raise OperationFailed(f"the disk of the source VM names {backing or data_file!r}, not its "
                                  "image's disk; refusing to copy it")
        return backing

    # -- backups --------------------------------------------------------------------------

    def backup_vm(self, vm_id: str, target: str, *, incremental: bool, vm: str, image: str) -> BackupInfo:
        running = self._running(vm_id)
        if running is None:
            raise Conflict(f"VM '{vm}' is not running; backups are taken while the guest runs",
                           hint=f"start it: virtpool vm start {vm}")
        return self._run(running.with_client(lambda client: backups.backup(
            client, Path(target), vm_id=vm_id, vm=vm, image=image, incremental=incremental)), timeout=None)

    def read_backup(self, source: str) -> BackupInfo:
        return backups.read_chain(Path(source))

    def restore_backup(self, vm_id: str, source: str) -> None:
        backups.restore(Path(source), self._paths(vm_id).disk, **self._as_disk_owner(vm_id))

    # -- snapshots ------------------------------------------------------------------------

    def _running(self, vm_id: str) -> VM | None:
        vm = self._vms.get(vm_id)
        return vm if vm is not None and vm.runstate == Runstate.RUNNING else None

    def list_snapshots(self, vm_id: str) -> list[SnapshotInfo]:
        return snapshots.list_snapshots(self._paths(vm_id).disk, **self._as_disk_owner(vm_id))

    def create_snapshot(self, vm_id: str, name: str, *, memory: bool) -> SnapshotInfo:
        vm = self._running(vm_id)
        try:
            if vm is None:
                snapshots.create_offline(self._paths(vm_id).disk, name, **self._as_disk_owner(vm_id))
            else:
                if memory:
                    self._check_room_for_memory(vm)
                self._run(snapshots.create_live(vm, vm.guest_agent, name, memory=memory, vm=vm.name),
                          timeout=None)
        except OperationFailed as err:
            if "No space left on device" not in err.message:
                raise
            # Whatever QEMU got written of it is no snapshot: it must not be listed as one.
            if any(s.name == name for s in self.list_snapshots(vm_id)):
                self.delete_snapshot(vm_id, name)
            raise no_room(self.vms_dir, f"taking snapshot '{name}'; nothing of it was kept, the VM "
                          "runs on") from err
        return next(s for s in self.list_snapshots(vm_id) if s.name == name)

    def _check_room_for_memory(self, vm: VM) -> None:
        """A memory snapshot writes up to the guest's RAM into its disk: refuse before it starts
        when the data dir has not that much room (plus a margin for the guests' own writes),
        rather than fill the disk every VM writes to."""
        ram = int(self._run(vm.command("query-memory-size-summary"))["base-memory"])
        need_mib = ram // MIB + MEMORY_SNAPSHOT_MARGIN_MIB
        free_mib = shutil.disk_usage(self.vms_dir).free // MIB
        if free_mib < need_mib:
            raise InsufficientStorage(
                f"a memory snapshot of VM '{vm.name}' needs up to {need_mib} MiB in the host's data "
                f"dir (its {ram // MIB} MiB of RAM and a margin); {free_mib} MiB are free. Nothing "
                "was written, the VM runs on", hint=FREE_SPACE_HINT)

    def restore_snapshot(self, vm_id: str, name: str) -> None:
        vm = self._running(vm_id)
        if vm is None:
            snapshots.restore_offline(self._paths(vm_id).disk, name, **self._as_disk_owner(vm_id))
        else:
            async def restore() -> None:
                # The guest, its agent included, goes back in time: CI saw an exec after a
                # restore read the stale reply of an address lookup from before the snapshot.
                async with vm.guest_agent.set_back():
                    await snapshots.restore_live(vm, name, vm=vm.name)

            self._run(restore(), timeout=None)

    def delete_snapshot(self, vm_id: str, name: str) -> None:
        self._warm.forget(vm_id, name)
        vm = self._running(vm_id)
        if vm is None:
            snapshots.delete_offline(self._paths(vm_id).disk, name, **self._as_disk_owner(vm_id))
        else:
            self._run(snapshots.delete_live(vm, name, vm=vm.name), timeout=None)

    # -- VM processes ---------------------------------------------------------------------

    def launch_plan(self, vm_id: str, spec: VMSpec, tap_fds: list[int] | None = None) -> LaunchPlan:
        """Gather the facts and resolve them (public: the boot benchmark runs the same plan)."""
        manifest = self.images.get(spec.image)
        directory = self.images.path(spec.image)
        image = launch.ImageFacts(directory=directory, manifest=manifest,
                                  kernel_is_elf=manifest.kernel is not None
                                  and kernel_kind(directory / manifest.kernel.path) == "elf")
        accel = self._accel if spec.accel == "auto" else accel_mod.detect(spec.accel)[0]
        host = launch.HostFacts(accel=accel, tsc_khz=self._tsc_khz, qemu_binary=self._qemu)
        paths = self._paths(vm_id)
        return launch.resolve(spec, image, paths, host, nics=self._nics(vm_id, tap_fds))

    def _nics(self, vm_id: str, tap_fds: list[int] | None = None) -> tuple[NicPlan, ...]:
        """Its taps on virtpool networks, else one NIC on the default network (passt)."""
        taps = self._net_plan.taps_of(vm_id) if self._net_plan else []
        if taps:
            fds: list[int | None] = list(tap_fds) if tap_fds else [None] * len(taps)
            return tuple(NicPlan(tap=t.name, mac=t.mac, fd=fd) for t, fd in zip(taps, fds))
        # Relative to the run dir, which QEMU and passt run in: passt cuts a socket path of
        # about 100 characters short without a word, and a data dir may be deep.
        return (NicPlan(socket=Path(self._paths(vm_id).passt_sock.name), mac=launch.default_mac(vm_id)),)

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

    def converge_networks(self, desired: HostNetworkInput) -> list[Change]:
        with self._net_lock:
            plan = host_plan(desired, self.net_prefix, self._uid_of_slot)
            if not plan.bridges and not users.running_as_root():
                self._net_plan = plan  # nothing to make, and no rights to look: nothing to do
                return []
            # Even for the plan applied last: the host is read afresh, so that what was changed
            # behind the agent's back (a rule or device deleted by hand) is put back.
            changes = self._networks.converge(plan)
            self._net_plan = plan
            return changes

    def _uid_of_slot(self, slot: int) -> int | None:
        return self._uids.range.user(slot).uid if self._uids is not None else None

    def start_vm(self, vm_id: str, spec: VMSpec, slot: int) -> int:
        paths = self._paths(vm_id)
        if not paths.disk.exists():
            raise NotFound(f"VM '{spec.name}' has no disk on this host ({paths.disk})")
        vm = self._run(self._on_loop(vm_id, spec.name))
        self._launches.put(vm_id, Launch(spec, slot, DEFAULT_REBOOT_WAIT_S))
        restore = self._launches.pending_restore(vm_id)
        with self._warm.source_lock(vm_id):  # not while a copy of its disk is being made
            pid = self._run(self._start(vm, spec, slot, restore=restore), timeout=None)
        if restore is not None:
            self._launches.restored(vm_id)
            self._restored[vm_id] = spec.name
        return pid

    async def _start(self, vm: VM, spec: VMSpec, slot: int, *, restore: str | None = None) -> int:
        """On the loop: passt, then QEMU in its cgroup, then the balloon; nothing left on failure."""
        await vm.until_idle(KILLED_EXIT_S)  # a start right after a stop, as its QEMU is tidied away
        await asyncio.to_thread(self._write_seed, vm.id, spec)
        user = await asyncio.to_thread(self._confine_files, vm.id, slot)
        tap_fds = await asyncio.to_thread(self._open_taps, vm.id)
        try:
            return await self._spawn(vm, spec, user, tap_fds, restore)
        finally:
            for fd in tap_fds:
                os.close(fd)  # QEMU holds its own copies

    async def _spawn(self, vm: VM, spec: VMSpec, user: users.VMUser | None, tap_fds: list[int],
                     restore: str | None = None) -> int:
        paths = vm.paths
        plan = await asyncio.to_thread(self.launch_plan, vm.id, spec, tap_fds)
        argv = build_argv(dataclasses.replace(plan, loadvm=restore) if restore else plan)
        network = passt.passt_argv(Path(paths.passt_sock.name), paths.passt_pidfile, paths.passt_log,
                                   tuple(spec.ports))
        popen_kwargs: dict[str, Any] = {}
        if user is not None:  # QEMU and its passt both run as the VM's user, without capabilities
            argv, network = users.confined_argv(user, argv), users.confined_argv(user, network)
            popen_kwargs = {"umask": users.QEMU_UMASK}
        uses_passt = not tap_fds and any(nic.socket for nic in self._nics(vm.id))
        group = await asyncio.to_thread(self._cgroup_for, vm.id, spec)

        def into_cgroup(pid: int) -> None:
            # At once, milliseconds after exec and before it loads the guest: what it
            # allocated until then (its libraries) is charged to the agent.
            if group is not None:
                group.attach(pid)

        vm.clear_stale_files()
        try:
            if uses_passt:
                await asyncio.to_thread(passt.start, network, vm=spec.name, cwd=paths.root, **popen_kwargs)
            pid = await vm.spawn(argv, {**popen_kwargs, "pass_fds": tuple(tap_fds), "cwd": paths.root},
                                 into_cgroup)
        except BaseException:
            passt.stop(paths.passt_pidfile)
            raise
        try:
            await self._configure_balloon(vm, spec)
        except BaseException:
            await vm.kill()
            raise
        return pid

    async def _reboot(self, vm: VM) -> bool:
        """Start the VM again after its guest rebooted, as its hardware would have."""
        launched = await asyncio.to_thread(self._launches.get, vm.id)
        if launched is None:
            return False
        spec, slot, timeout = launched.spec, launched.slot, launched.boot_timeout_s
        log.info("VM %s rebooted itself; starting it again", spec.name)
        await self._start(vm, spec, slot)

        async def until_ready() -> None:
            try:
                await vm.wait_ready(timeout)
            except OperationFailed as err:
                log.warning("VM %s did not come back from its reboot: %s", spec.name, err.message)

        asyncio.get_running_loop().create_task(until_ready())
        return True

    def _write_seed(self, vm_id: str, spec: VMSpec) -> None:
        """The VM's cloud-init seed, made anew (its NICs or configuration may have changed);
        created without following anything the VM's user planted under its name."""
        seed = self._paths(vm_id).seed
        if not launch.wants_seed(spec, self.images.get(spec.image)):
            seed.unlink(missing_ok=True)
            return
        macs = [nic.mac for nic in self._nics(vm_id) if nic.mac]
        files = cloudinit.seed_files(spec.cloud_init or CloudInit(), instance_id=vm_id,
                                     default_hostname=spec.name, macs=macs)
        fd = safe_files.create_new(seed, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(cloudinit.seed_iso(files))

    def _confine_files(self, vm_id: str, slot: int) -> users.VMUser | None:
        """As root: give the VM's run dir and disk to its own user, the user QEMU runs as."""
        if self._uids is None:
            return None
        user = self._uids.range.user(slot)
        users.check_unclaimed(user)
        paths = self._paths(vm_id)
        users.own_run_dir(paths.root, user)
        users.own_disk(paths.disk, user)
        self._bases.grant(vm_id, user.uid)  # a linked clone reads its base, no other VM does
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

    async def _release(self, vm: VM) -> None:
        """A QEMU of the VM has exited: its passt (it exits with its QEMU, --one-off; this is
        for a QEMU that never connected) and its cgroup. Both may wait for a process to leave,
        so in a thread: the loop serves every other VM meanwhile."""
        self._cpu_samples.pop(vm.id, None)
        self._guest_net.pop(vm.id, None)
        self._guest_net_at.pop(vm.id, None)
        await asyncio.to_thread(passt.stop, vm.paths.passt_pidfile)
        await asyncio.to_thread(self._release_cgroup, vm.id)

    def _release_cgroup(self, vm_id: str) -> None:
        if self._cgroups:
            try:
                cgroups.vm_cgroup(vm_id).remove()
            except OperationFailed:
                log.warning("cgroup of VM %s could not be removed yet", vm_id)

    async def _configure_balloon(self, vm: VM, spec: VMSpec) -> None:
        # The guest boots with its ceiling and the balloon takes it down to what it was given;
        # the target is held by the device, so the guest driver applies it whenever it loads.
        await vm.command("qom-set", {"path": BALLOON_PATH, "property": "guest-stats-polling-interval",
                                     "value": BALLOON_STATS_INTERVAL_S})
        if spec.memory_mib < spec.boot_memory_mib:
            await vm.command("balloon", {"value": spec.memory_mib * MIB})

    def wait_ready(self, vm_id: str, timeout: float) -> None:
        async def wait() -> None:
            vm = self._vm(vm_id)
            await vm.wait_ready(timeout)
            name = self._restored.pop(vm_id, None)
            if name is not None:
                await vm.take_identity(name)
            launched = self._launches.get(vm_id)
            if launched is not None:  # a reboot waits as long as this boot was allowed
                self._launches.put(vm_id, Launch(launched.spec, launched.slot, timeout))

        self._run(wait(), timeout=None)

    def stop_vm(self, vm_id: str, timeout: float) -> StopMethod | None:
        async def stop() -> StopMethod | None:
            vm = self._vm(vm_id)
            if vm.runstate == Runstate.IDLE and not await vm.attach():
                return None
            deadline = time.monotonic() + timeout
            try:
                await vm.ask_agent_to_stop()
            except GuestAgentError as err:
                log.info("VM %s: %s; pressing the ACPI power button", vm.name, err.message)
            else:
                # The agent took it: most of the time is the guest's; the rest goes to ACPI.
                if await vm.wait_gone(max(0.0, deadline - time.monotonic()) * ACPI_SHARE_AFTER_AGENT):
                    return "guest-agent"
            # Pressed again now and then: a guest may miss one press (ACPI's event came while
            # nothing listened for it yet), and a guest already on its way down ignores it.
            while (remaining := deadline - time.monotonic()) > 0:
                await vm.press_power_button()
                if await vm.wait_gone(min(remaining, ACPI_REPRESS_S)):
                    return "acpi"
            await vm.kill()
            return "killed"

        return self._run(stop(), timeout=None)

    def kill_vm(self, vm_id: str) -> None:
        async def kill() -> None:
            vm = self._vm(vm_id)
            if vm.runstate == Runstate.IDLE:
                try:
                    await vm.attach()
                except OperationFailed:
                    pass
            await vm.kill()

        self._run(kill(), timeout=None)

    def _command(self, vm_id: str, cmd: str, arguments: dict[str, Any] | None = None) -> Any:
        async def run() -> Any:
            return await self._vm(vm_id).command(cmd, arguments)

        return self._run(run())

    def pause_vm(self, vm_id: str) -> None:
        self._command(vm_id, "stop")

    def resume_vm(self, vm_id: str) -> None:
        self._command(vm_id, "cont")

    def exec_vm(self, vm_id: str, argv: list[str], timeout: float, stdin: bytes | None = None) -> ExecResult:
        async def run() -> ExecResult:
            return await self._vm(vm_id).exec(argv, timeout, stdin)

        return self._run(run(), timeout=None)

    def exec_stream(
        self, vm_id: str, argv: list[str], timeout: float, stdin: bytes | ByteStream | None = None
    ) -> Iterator[ExecOutput | ExecResult]:
        # The guest agent runs on this agent's loop; its output crosses to the caller's thread
        # through a queue, the result (or the error) last. Streamed input crosses the other way
        # (InputPull), read on a thread of its own so that the loop never waits for it.
        found: queue.Queue[ExecOutput | ExecResult | BaseException] = queue.Queue()
        pull = None if stdin is None or isinstance(stdin, bytes) else InputPull(stdin)
        try:
            done = self._submit(self._vm(vm_id).exec(argv, timeout, pull.take if pull is not None else stdin,
                                                     emit=found.put))
            done.add_done_callback(lambda f: found.put(f.exception() or f.result()))
            while True:
                item = found.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, ExecResult):
                    return
        finally:
            if pull is not None:
                pull.stop()

    def adopt_running(self) -> list[str]:
        """At a standalone agent's start: take over the QEMUs of this host's VMs that outlived
        the previous agent, so that they answer (exec, console, stats) from the first request
        on, before the control plane's reconcile gets to them. Returns the VMs adopted."""
        adopted = []
        for vm_id in sorted(self.vm_ids()):
            launch = self._launches.get(vm_id)
            if self.adopt_vm(vm_id, launch.spec.name if launch is not None else vm_id) is not None:
                adopted.append(vm_id)
        return adopted

    def adopt_vm(self, vm_id: str, name: str) -> RunStatus | None:
        async def adopt() -> RunStatus | None:
            vm = self._vm(vm_id, name)
            if not await vm.attach():
                return None
            # "io-error": paused by QEMU on a disk error (resumed by housekeeping once there is room)
            return "paused" if await vm.status() in ("paused", "io-error") else "running"

        return self._run(adopt())

    async def open_console(self, vm_id: str) -> Console:
        vm = self._vms.get(vm_id)
        if vm is None or vm.runstate != Runstate.RUNNING:
            raise Conflict("the VM's QEMU is not running here", hint="start the VM first")
        # The VM and its console live on this agent's loop; the caller is on its own.
        console = await asyncio.wrap_future(self._submit(vm.open_console()))
        return CrossLoopConsole(console, self._loop)

    # -- live resources -------------------------------------------------------------------

    def apply_live(self, vm_id: str, changes: LiveChanges) -> None:
        # QMP first: it is what fails in practice (a VM that went away, a disk that cannot
        # grow), and the control plane then restores its record; the cgroup writes below take
        # values the model has already validated.
        if changes.balloon_mib is not None:
            self._command(vm_id, "balloon", {"value": changes.balloon_mib * MIB})
        if changes.throttle is not None:
            iops, bps = changes.throttle
            self._command(vm_id, "block_set_io_throttle", {
                "id": DISK_DEVICE_ID, "iops": iops, "bps": bps,
                "iops_rd": 0, "iops_wr": 0, "bps_rd": 0, "bps_wr": 0})
        if changes.disk_mib is not None:
            self._command(vm_id, "block_resize", {"device": DRIVE_ID, "size": changes.disk_mib * MIB})
        if self._cgroups and {"cpu_cap_pct", "cpu_weight", "cpu_affinity"} & changes.model_fields_set:
            group = cgroups.vm_cgroup(vm_id)
            if "cpu_weight" in changes.model_fields_set and changes.cpu_weight is not None:
                group.set_cpu_weight(changes.cpu_weight)
            if "cpu_cap_pct" in changes.model_fields_set:
                group.set_cpu_cap(changes.cpu_cap_pct or None)
            if "cpu_affinity" in changes.model_fields_set:
                group.set_cpus(changes.cpu_affinity or None)

    def vm_stats(self, vm_id: str) -> VMUsage:
        """CPU from the process accounting, the rest from QMP."""
        vm = self._vms.get(vm_id)
        proc = vm.process if vm is not None else None
        if vm is None or proc is None or vm.runstate != Runstate.RUNNING:
            return VMUsage()
        figures: dict[str, Any] = {}
        samples = self._cpu_samples.get(vm_id)
        cpu_s = self._cpu_seconds(vm)
        figures["cpu_time_s"] = cpu_s
        if samples and cpu_s is not None:
            then, then_cpu = samples[0]
            elapsed = time.monotonic() - then
            if elapsed > 0.2:
                figures["cpu_percent"] = round(100 * (cpu_s - then_cpu) / elapsed, 1)
        try:
            figures["qemu_rss_mib"] = round(proc.memory_info().rss / MIB, 1)
        except psutil.NoSuchProcess:
            return VMUsage(**figures)
        figures.update(self._run(_qmp_stats(vm)))
        figures.update(self._net_counters(vm))
        return VMUsage(**figures)

    def _net_counters(self, vm: VM) -> dict[str, int]:
        """Its taps' host counters, else (the default network) what its guest agent counts."""
        taps = self._net_plan.taps_of(vm.id) if self._net_plan else []
        if taps:
            counters = tap_counters(t.name for t in taps)
        else:
            if vm.id not in self._guest_net:  # none yet: ask now, briefly
                self._run(self._ask_guest_net(vm, FIRST_GUEST_NET_ANSWER_S))
            counters = self._guest_net.get(vm.id)
        return counters.as_usage() if counters is not None else {}

    async def _ask_guest_net(self, vm: VM, answer_within: float) -> None:
        try:
            counters = guest_counters(await vm.guest_interfaces(answer_within))
            if counters is not None and self._vms.get(vm.id) is vm:
                self._guest_net[vm.id] = counters
        finally:
            self._guest_net_at[vm.id] = time.monotonic()

    def _refresh_guest_nets(self, running: list[VM]) -> None:
        """Ask the guest agents of default-network VMs for their counters, in the background."""
        now = time.monotonic()
        for vm in running:
            if (vm.id in self._guest_net_asks or now - self._guest_net_at.get(vm.id, 0.0) < GUEST_NET_REFRESH_S
                    or (self._net_plan and self._net_plan.taps_of(vm.id))):
                continue
            task = asyncio.get_running_loop().create_task(self._ask_guest_net(vm, GUEST_NET_ANSWER_S))
            self._guest_net_asks[vm.id] = task
            task.add_done_callback(lambda _, vm_id=vm.id: self._guest_net_asks.pop(vm_id, None))

    # -- housekeeping ---------------------------------------------------------------------

    async def _housekeeping_forever(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            for vm in [v for v in self._vms.values() if v.runstate == Runstate.RUNNING and v.io_paused]:
                await self._resume_if_room(vm)
            running = [v for v in self._vms.values() if v.runstate == Runstate.RUNNING]
            for vm in running:
                try:
                    await asyncio.to_thread(self._housekeep, vm)
                except Exception:  # one VM going away mid-pass must not stop the others' care
                    log.exception("housekeeping of VM %s failed", vm.id)
            self._refresh_guest_nets(running)

    async def _resume_if_room(self, vm: VM) -> None:
        """Resume a guest that a full disk paused, once its disk's filesystem has room again
        (as QEMU, not root, sees it: f_bavail). Its RESUME tells the feed."""
        try:
            info = os.statvfs(vm.paths.root)
        except OSError:
            return  # its directory went away: the VM is going too
        if info.f_bavail * info.f_frsize < RESUME_FREE_BYTES:
            return
        try:
            await vm.command("cont")
            log.info("resumed VM %s: its disk has room again", vm.name)
        except (OperationFailed, StateError) as err:
            log.warning("could not resume VM %s after its disk error: %s", vm.name, err.message)

    def _housekeep(self, vm: VM) -> None:
        cpu_s = self._cpu_seconds(vm)
        if cpu_s is not None:
            self._cpu_samples.setdefault(vm.id, deque(maxlen=2)).append((time.monotonic(), cpu_s))

    def _cpu_seconds(self, vm: VM) -> float | None:
        if self._cgroups:
            group = cgroups.vm_cgroup(vm.id)
            if group.exists():
                return group.usage().cpu_time_ns / 1e9
        proc = vm.process
        if proc is None:
            return None
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            return None
        return times.user + times.system


def _copy_regular(source: Path, target: Path) -> None:
    """Copy a file of a VM's dir (never through a link its user planted) to a new root file."""
    src = safe_files.open_regular(source)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            size = os.fstat(src).st_size
            while size > 0:
                copied = os.copy_file_range(src, dst, min(size, 1 << 30))
                if copied == 0:
                    break
                size -= copied
        finally:
            os.close(dst)
    finally:
        os.close(src)


async def _qmp_stats(vm: VM) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    balloon = await vm.command("query-balloon")
    figures["balloon_mib"] = round(balloon["actual"] / MIB, 1)
    guest = await vm.command("qom-get", {"path": BALLOON_PATH, "property": "guest-stats"})
    stats = guest.get("stats", {})
    if guest.get("last-update"):
        for key, field in (("stat-total-memory", "guest_total_mib"), ("stat-free-memory", "guest_free_mib")):
            if stats.get(key, -1) >= 0:
                figures[field] = round(stats[key] / MIB, 1)
    for device in await vm.command("query-blockstats"):
        if device.get("device") == DRIVE_ID:
            block = device["stats"]
            figures.update(disk_read_bytes=block["rd_bytes"], disk_written_bytes=block["wr_bytes"],
                           disk_read_ops=block["rd_operations"], disk_write_ops=block["wr_operations"])
    return figures


def _unprivileged_port_start() -> int:
    """The lowest port an unprivileged process may bind in this network namespace."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024  # Linux's default, from before the setting existed (4.11)


_qemu_versions: dict[str, str] = {}


def _qemu_version(binary: str) -> str:
    if binary not in _qemu_versions:
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
            _qemu_versions[binary] = out.stdout.splitlines()[0] if out.stdout else "unknown"
        except (OSError, subprocess.TimeoutExpired):
            _qemu_versions[binary] = "not installed"
    return _qemu_versions[binary]
