"""The one interface through which the control plane reaches a host: data only.

Two implementations speak it: ``virtpool.node.agent.LocalAgent`` in the control plane's own
process (single-node mode), and ``virtpool.control.agents.remote.RemoteAgent`` over HTTPS to
a `virtpool agent` on another host. Nothing crosses it that only makes sense on one machine:
no paths, no callbacks, no sockets. Uploads and the console are byte streams; what happens to
a VM on its own (QEMU exited, the guest powered off, a balloon moved, an I/O error) is a feed
of ``AgentEvent`` read from a cursor, kept on the host so that neither side loses one across a
restart of either.

Every call says whether it is idempotent (asking twice leaves the host as asking once did)
and what it raises. Every call may also raise ``AgentUnreachable`` when the host cannot be
reached (only the remote implementation does); the control plane must then assume nothing
about whether the call took effect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from virtpool.model.backup import BackupInfo
from virtpool.model.errors import OperationFailed
from virtpool.model.image import Firmware, ImageInfo
from virtpool.model.net_change import Change
from virtpool.model.network import HostNetworkInput
from virtpool.model.snapshot import CloneKind, SnapshotInfo
from virtpool.model.spec import ExecOutput, ExecResult, HostInfo, LiveChanges, VMSpec
from virtpool.model.vm import StopMethod, VMUsage

# (step, fraction done)
Progress = Callable[[str, float], None]
# The bytes of one file, in chunks, in order.
ByteStream = Iterable[bytes]

EventKind = Literal["vm.exited", "vm.powered_off", "vm.balloon", "vm.io_error", "vm.resumed"]
RunStatus = Literal["running", "paused"]
# The contract's version: an agent and a control plane talk only when their majors match.
CONTRACT_VERSION = "1.0"


class AgentUnreachable(OperationFailed):
    """The host's agent did not answer (network, TLS, or the agent is down)."""

    status = 503
    title = "host unreachable"


class AgentEvent(BaseModel):
    """Something that happened to a VM on a host without the control plane asking.

    ``seq`` grows by one per event on that host and survives restarts of its agent; a reader
    keeps the last ``seq`` it handled and asks for what came after.

    - ``vm.exited``: the VM's QEMU process is gone; ``data.guest_initiated`` is true when the
      guest powered itself off (else it was killed or crashed).
    - ``vm.powered_off``: the guest asked to power off (QEMU's SHUTDOWN from the guest).
    - ``vm.balloon``: the guest's memory after a balloon move, ``data.actual_mib``.
    - ``vm.io_error``: QEMU reported an I/O error on a disk, ``data`` has QEMU's details
      (BLOCK_IO_ERROR's). With ``data.action`` "stop" QEMU paused the guest (its drives stop
      on ENOSPC; ``data.nospace``): said once per pause; the agent resumes the guest once the
      disk has room again. Other actions: at most one event a second.
    - ``vm.resumed``: a guest paused by a disk error runs again (``data.after`` "io_error").
    """

    seq: int
    kind: EventKind
    vm_id: str
    at: datetime
    data: dict[str, Any] = {}


class Console(Protocol):
    """A VM's serial console as a byte stream both ways (async: it is relayed to a websocket)."""

    async def read(self) -> bytes:
        """The next bytes from the guest; b"" when the console closed."""
        ...

    async def write(self, data: bytes) -> None:
        """Send bytes to the guest."""
        ...

    async def close(self) -> None:
        """Close the stream; the VM keeps running."""
        ...


class ImageStoreContract(Protocol):
    """The image calls of ``Agent``: what the pool's image store answers too (the control
    plane's own, under `virtpool server`; the local agent's, under `virtpool up`)."""

    def list_images(self) -> list[ImageInfo]: ...

    def get_image(self, name: str) -> ImageInfo: ...

    def build_image(self, name: str, progress: Progress | None = None) -> tuple[ImageInfo, bool]: ...

    def import_image(self, name: str, files: Mapping[str, ByteStream], *, kernel_args: str,
                     firmware: Firmware | None = None) -> ImageInfo: ...

    def image_file(self, name: str, file: str) -> Iterator[bytes]: ...

    def delete_image(self, name: str) -> None: ...


class Agent(Protocol):
    """What a host can do for the pool."""

    # -- host -------------------------------------------------------------------------------

    def host_info(self) -> HostInfo:
        """The host's hardware and software figures. Idempotent; raises nothing else."""
        ...

    def check_port_free(self, port: int) -> bool:
        """Whether a VM could forward ``port`` on the host now. Idempotent, read only."""
        ...

    # -- images -----------------------------------------------------------------------------

    def list_images(self) -> list[ImageInfo]:
        """The images on this host. Idempotent, read only."""
        ...

    def get_image(self, name: str) -> ImageInfo:
        """One image. Idempotent, read only. Raises NotFound."""
        ...

    def build_image(self, name: str, progress: Progress | None = None) -> tuple[ImageInfo, bool]:
        """Build the default recipe as ``name`` (True) or find it built already (False).

        Idempotent (a built image is kept). Raises InvalidRequest (bad name), OperationFailed
        (the build failed; nothing is left behind)."""
        ...

    def import_image(self, name: str, files: Mapping[str, ByteStream], *, kernel_args: str,
                     firmware: Firmware | None = None) -> ImageInfo:
        """Store an image from ``files``: "kernel", "initrd", "disk", each a stream. With a
        kernel it boots directly on microvm; a disk alone boots through ``firmware`` (default
        BIOS) on q35.

        Not idempotent: a second import of the same name raises Conflict. Raises InvalidRequest
        (bad name or files), InsufficientStorage (no room); nothing is kept on refusal."""
        ...

    def receive_image(self, info: ImageInfo, files: Mapping[str, ByteStream]) -> ImageInfo:
        """Store an image the pool holds, byte for byte: each file is checked against the
        size and SHA-256 in ``info``, else nothing is kept (InvalidRequest). Idempotent: an
        image with the same checksums stays; one that differs raises Conflict."""
        ...

    def image_file(self, name: str, file: str) -> Iterator[bytes]:
        """The bytes of one of an image's files ("kernel", "initrd", "disk"), streamed.

        Idempotent, read only. Raises NotFound."""
        ...

    def delete_image(self, name: str) -> None:
        """Remove an image. Raises NotFound when it is not there (so: not idempotent)."""
        ...

    # -- VM files ---------------------------------------------------------------------------

    def vm_ids(self) -> set[str]:
        """The VMs that have files on this host. Idempotent, read only."""
        ...

    def create_disk(self, vm_id: str, image: str, disk_mib: int) -> None:
        """Make the VM's disk over ``image``. Raises NotFound (image), InsufficientResources
        (disk smaller than the image's, or larger than the free space). Not idempotent:
        a second call replaces the disk."""
        ...

    def resize_disk_offline(self, vm_id: str, disk_mib: int) -> None:
        """Grow a stopped VM's disk. Idempotent for the same size. Raises OperationFailed."""
        ...

    def destroy_vm(self, vm_id: str) -> None:
        """Kill the VM's QEMU if it runs and remove all its files. Idempotent."""
        ...

    def read_log(self, vm_id: str, offset: int = 0, limit: int = 1 << 20) -> tuple[bytes, int]:
        """Serial log bytes from ``offset``, and the offset to read from next. Idempotent."""
        ...

    # -- VM processes -----------------------------------------------------------------------

    def start_vm(self, vm_id: str, spec: VMSpec, slot: int) -> int:
        """Spawn the VM's QEMU (as the user of ``slot`` where it can); return once its
        monitor answers, with its pid. Not idempotent. Raises NotFound (no disk), Conflict (a
        QEMU of the VM runs already), OperationFailed (QEMU refused; nothing is left)."""
        ...

    def wait_ready(self, vm_id: str, timeout: float) -> None:
        """Block until the guest agent answers. Idempotent. Raises BootTimeout, OperationFailed
        (QEMU exited while the guest booted)."""
        ...

    def stop_vm(self, vm_id: str, timeout: float) -> StopMethod | None:
        """Stop within ``timeout``: through the guest agent, else the ACPI power button, else
        kill it. Says which of these ended it; None when no QEMU of the VM ran (so:
        idempotent). Raises OperationFailed."""
        ...

    def kill_vm(self, vm_id: str) -> None:
        """Stop the VM's QEMU at once. Idempotent."""
        ...

    def list_snapshots(self, vm_id: str) -> list[SnapshotInfo]:
        """The snapshots in the VM's disk. Idempotent, read only."""
        ...

    def create_snapshot(self, vm_id: str, name: str, *, memory: bool) -> SnapshotInfo:
        """Snapshot the VM's disk (stopped or running; a running guest's filesystems frozen
        through its agent where it has one), with ``memory`` its RAM too (running only). Not
        idempotent (a taken name raises Conflict)."""
        ...

    def restore_snapshot(self, vm_id: str, name: str) -> None:
        """Put the disk (and, for a memory snapshot of a running VM, the running state) back.
        Idempotent. Raises NotFound, OperationFailed."""
        ...

    def delete_snapshot(self, vm_id: str, name: str) -> None:
        """Remove a snapshot. Raises NotFound (no such snapshot), OperationFailed."""
        ...

    def clone_disk(self, source_vm_id: str, vm_id: str, *, image: str, snapshot: str | None,
                   kind: CloneKind = "full", keep_ready: int = 0) -> None:
        """Replace ``vm_id``'s new disk by a copy of the source VM's (stopped) disk, or of its
        snapshot ``snapshot`` (the source may then run, except for ``kind`` "memory"): "full",
        a flat copy; "linked", an overlay on a base of the source's data that the host keeps
        until its last clone is destroyed; "memory", a copy keeping the memory snapshot
        ``snapshot``, which ``vm_id``'s next start resumes; with ``keep_ready`` N the host keeps
        N such copies made ahead (taken by the next clones, refilled in the background). Not idempotent (a new base or copy
        each time). Raises OperationFailed when the source disk names a file it may not."""
        ...

    def backup_vm(self, vm_id: str, target: str, *, incremental: bool, vm: str, image: str) -> BackupInfo:
        """Back a running VM's disk up into the host directory ``target`` (full: empty or new;
        incremental: this VM's chain). Not idempotent (each call adds a file to the chain). A
        failed backup leaves the directory as it was. Raises Conflict (not running, another
        VM's chain), InvalidRequest (bad directory), OperationFailed."""
        ...

    def read_backup(self, source: str) -> BackupInfo:
        """The chain in the host directory ``source``. Idempotent, read only. Raises NotFound."""
        ...

    def restore_backup(self, vm_id: str, source: str) -> None:
        """Replace a stopped VM's disk with the newest state of the chain in ``source``.
        Idempotent. Raises NotFound, InvalidRequest (a damaged chain), OperationFailed."""
        ...

    def pause_vm(self, vm_id: str) -> None:
        """Freeze the guest's vCPUs. Idempotent. Raises Conflict (no QEMU), OperationFailed."""
        ...

    def resume_vm(self, vm_id: str) -> None:
        """Let the guest's vCPUs run again. Idempotent. Raises Conflict, OperationFailed."""
        ...

    def exec_vm(self, vm_id: str, argv: list[str], timeout: float, stdin: bytes | None = None) -> ExecResult:
        """Run a command in the guest through its agent. Not idempotent (the command runs
        again). Raises Conflict (no QEMU), OperationFailed (guest agent), BootTimeout."""
        ...

    def exec_stream(
        self, vm_id: str, argv: list[str], timeout: float, stdin: bytes | ByteStream | None = None
    ) -> Iterator[ExecOutput | ExecResult]:
        """Run ``argv`` in the guest: its output while it runs, then its result (the result's
        stdout and stderr are empty: all of it came before). ``stdin`` is its input whole, or a
        byte stream read while it runs (its end is the command's end of file). A command still
        running at ``timeout`` is killed and CommandTimeout raised."""
        ...

    def apply_live(self, vm_id: str, changes: LiveChanges) -> None:
        """Change a running VM's balloon, CPU limits, disk throttling or disk size.
        Idempotent. Raises Conflict (no QEMU), OperationFailed (QEMU refused)."""
        ...

    def vm_stats(self, vm_id: str) -> VMUsage:
        """What a running VM uses now (empty figures when it is not running). Read only.
        Raises OperationFailed (QEMU did not answer)."""
        ...

    def adopt_vm(self, vm_id: str, name: str) -> RunStatus | None:
        """Re-attach to a VM's QEMU after a restart of either side: its status, or None when
        no QEMU of the VM runs. Idempotent."""
        ...

    def open_console(self, vm_id: str) -> Console:
        """Open the VM's serial console. Raises Conflict (no QEMU), OperationFailed."""
        ...

    # -- events and lifetime ----------------------------------------------------------------

    def converge_networks(self, desired: HostNetworkInput) -> list[Change]:
        """Make this host's bridges, VXLAN devices, taps, nftables rules and DHCP servers
        exactly what ``desired`` says (idempotent; what is not in it is removed), and say what
        had to change: empty when the host already was ``desired``."""
        ...

    def events(self, after: int, wait: float = 0.0) -> list[AgentEvent]:
        """The events with ``seq`` > ``after``, oldest first; waits up to ``wait`` seconds
        for one when there are none. Idempotent, read only. When ``after`` is older than the
        oldest event the host still keeps, the answer starts at the oldest kept."""
        ...

    def close(self) -> None:
        """Let go of the host (threads, connections); its VMs keep running. Idempotent."""
        ...
