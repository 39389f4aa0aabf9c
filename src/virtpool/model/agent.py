"""The one interface through which the control plane reaches a host.

Implemented in-process by ``virtpool.node.agent.LocalAgent`` (single-node mode); a remote
implementation over HTTP will speak the same calls. The control plane imports this protocol,
never the node package's internals.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from virtpool.model.image import Firmware, ImageInfo
from virtpool.model.snapshot import SnapshotInfo
from virtpool.model.spec import ExecResult, HostInfo, LiveChanges, VMSpec
from virtpool.model.vm import StopMethod

# (vm_id, guest_initiated): the VM's QEMU exited; guest_initiated when the guest powered off.
ExitHandler = Callable[[str, bool], None]
Progress = Callable[[str, float], None]


class Agent(Protocol):
    """What a host can do for the pool. Every call is idempotent where it can be."""

    def host_info(self) -> HostInfo: ...

    def list_images(self) -> list[ImageInfo]: ...

    def get_image(self, name: str) -> ImageInfo: ...

    def build_image(self, name: str, progress: Progress | None = None) -> tuple[ImageInfo, bool]: ...

    def import_image(
        self, name: str, *, kernel: Path | None, initrd: Path | None, disk: Path | None,
        kernel_args: str, firmware: Firmware | None = None,
    ) -> ImageInfo:
        """Without a kernel the disk boots through ``firmware`` (default BIOS) on q35."""
        ...

    def delete_image(self, name: str) -> None: ...

    def staging_dir(self) -> Path:
        """A private directory on the host's data disk for uploads on their way in."""
        ...

    def on_exit(self, handler: ExitHandler) -> None: ...

    def check_port_free(self, port: int) -> bool: ...

    def create_disk(self, vm_id: str, image: str, disk_mib: int) -> None: ...

    def start_vm(self, vm_id: str, spec: VMSpec, slot: int) -> int:
        """Spawn the VM's QEMU (as the user of ``slot`` where it can) once its monitor answers."""
        ...

    def wait_ready(self, vm_id: str, timeout: float) -> None: ...

    def stop_vm(self, vm_id: str, timeout: float) -> StopMethod | None:
        """Stop within ``timeout``: through the guest agent, else the ACPI power button, else
        kill it. Says which of these ended it; None when no QEMU of the VM ran."""
        ...

    def kill_vm(self, vm_id: str) -> None: ...

    def list_snapshots(self, vm_id: str) -> list[SnapshotInfo]:
        """The snapshots in the VM's disk. Read only."""
        ...

    def create_snapshot(self, vm_id: str, name: str, *, memory: bool) -> SnapshotInfo:
        """Snapshot the VM's disk (stopped or running; a running guest's filesystems frozen
        through its agent where it has one), with ``memory`` its RAM too (running only)."""
        ...

    def restore_snapshot(self, vm_id: str, name: str) -> None:
        """Put the disk (and, for a memory snapshot of a running VM, the running state) back."""
        ...

    def delete_snapshot(self, vm_id: str, name: str) -> None: ...

    def pause_vm(self, vm_id: str) -> None: ...

    def resume_vm(self, vm_id: str) -> None: ...

    def exec_vm(
        self, vm_id: str, argv: list[str], timeout: float, stdin: bytes | None = None
    ) -> ExecResult: ...

    def apply_live(self, vm_id: str, changes: LiveChanges) -> None:
        """Change a running VM's balloon, CPU limits, disk throttling or disk size."""
        ...

    def resize_disk_offline(self, vm_id: str, disk_mib: int) -> None: ...

    def vm_stats(self, vm_id: str) -> dict[str, Any]:
        """Usage figures of a running VM, named as the fields of ``VMStats``."""
        ...

    def adopt_vm(self, vm_id: str, name: str) -> str | None:
        """Re-attach to a VM's QEMU after a restart: 'running', 'paused', or None if gone."""
        ...

    def destroy_vm(self, vm_id: str) -> None: ...

    def vm_ids(self) -> set[str]: ...

    def read_log(self, vm_id: str, offset: int = 0, limit: int = 1 << 20) -> tuple[bytes, int]:
        """Serial log bytes from ``offset``, and the offset to read from next."""
        ...

    def console_socket(self, vm_id: str) -> Path: ...

    def close(self) -> None: ...
