"""The agent of a control plane that runs without one (`virtpool server`).

Such a server keeps the pool's records and answers everything that needs only them (VM
records, operations, events, audit); whatever needs a host is refused with 503 until agents
on other hosts can be attached (not built yet: multi-host agents come later).
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
        hint="run `virtpool up` on a host for single-node mode; remote agents are not supported yet")


class NoAgent:
    """Implements the Agent protocol by refusing every host action."""

    host_info = list_images = get_image = build_image = import_image = delete_image = _refuse
    staging_dir = check_port_free = create_disk = start_vm = wait_ready = stop_vm = _refuse
    kill_vm = pause_vm = resume_vm = exec_vm = apply_live = resize_disk_offline = _refuse
    vm_stats = read_log = console_socket = _refuse
    list_snapshots = create_snapshot = restore_snapshot = delete_snapshot = _refuse

    def on_exit(self, handler: Any) -> None:
        """No QEMU runs here, so none can exit."""

    def adopt_vm(self, vm_id: str, name: str) -> str | None:
        return None

    def destroy_vm(self, vm_id: str) -> None:
        _refuse()

    def vm_ids(self) -> set[str]:
        return set()

    def close(self) -> None:
        """Nothing to release."""


__all__ = ["NoAgent", "NoAgentAttached"]
