"""The agent of a control plane that runs without one (`virtpool server`).

Such a server keeps the pool's records and answers everything that needs only them (VM
records, operations, events, audit); whatever needs this host is refused with 503. VMs run on
the hosts whose agents joined (control/agents/registry.py).
"""

from __future__ import annotations

from typing import Any, NoReturn

from virtpool.model.errors import VirtpoolError


class NoAgentAttached(VirtpoolError):
    status = 503
    title = "no agent attached"


def _refuse(*_: Any, **__: Any) -> NoReturn:
    raise NoAgentAttached(
        "this is a control-plane-only server (`virtpool server`): no host agent is attached, "
        "so nothing that needs a host (images, disks, QEMU) can be done here",
        hint="run `virtpool agent --server URL --join TOKEN` on a host to add it to the pool")


class NoAgent:
    """Implements the Agent protocol by refusing every host action."""

    host_info = list_images = get_image = build_image = import_image = delete_image = _refuse
    image_file = receive_image = check_port_free = create_disk = start_vm = wait_ready = stop_vm = _refuse
    kill_vm = pause_vm = resume_vm = exec_vm = exec_stream = apply_live = resize_disk_offline = _refuse
    vm_stats = read_log = _refuse
    list_snapshots = create_snapshot = restore_snapshot = delete_snapshot = _refuse
    backup_vm = read_backup = restore_backup = clone_disk = _refuse

    def converge_networks(self, desired: Any) -> list[Any]:
        """No host, so no devices: a VM on a network cannot start here anyway."""
        return []

    async def open_console(self, vm_id: str) -> Any:
        _refuse()

    def events(self, after: int, wait: float = 0.0) -> list[Any]:
        """No QEMU runs here, so nothing happens to one."""
        return []

    def adopt_vm(self, vm_id: str, name: str) -> str | None:
        return None

    def destroy_vm(self, vm_id: str) -> None:
        _refuse()

    def vm_ids(self) -> set[str]:
        return set()

    def close(self) -> None:
        """Nothing to release."""


__all__ = ["NoAgent", "NoAgentAttached"]
