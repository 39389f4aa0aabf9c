"""Snapshots of one VM's disk, internal to its qcow2, with or without the guest's memory.

A stopped VM's disk is snapshotted with ``qemu-img`` (run as the VM's user: the disk is that
user's file). A running VM's is snapshotted through QMP: a disk-only snapshot freezes the
guest's filesystems through its agent around ``blockdev-snapshot-internal-sync`` so that it is
consistent; a memory snapshot is QEMU's ``snapshot-save`` job (disk and RAM together, which
``snapshot-load`` brings back into the running VM).

The snapshot list is read from the qcow2 itself (``qemu-img info``): the disk is the only
place a snapshot exists, so there is nothing to get out of step.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from virtpool.model.errors import OperationFailed
from virtpool.model.snapshot import SnapshotInfo
from virtpool.node.backups import BITMAP_PREFIX
from virtpool.node.disks import run_qemu_img
from virtpool.node.qemu.argv import DRIVE_ID
from virtpool.node.qemu.guest_agent import GuestAgent, GuestAgentChannel, GuestAgentError



class Monitor(Protocol):
    """The VM's one QMP session (node/vm.py's ``VM``)."""

    async def command(self, cmd: str, arguments: dict[str, Any] | None = None) -> Any: ...


JOB_TIMEOUT_S = 600.0  # a memory snapshot of a large guest under TCG writes all its RAM
FREEZE_TIMEOUT_S = 10.0


def parse_snapshots(info: dict[str, Any]) -> list[SnapshotInfo]:
    """Snapshots from ``qemu-img info --output=json``. Pure."""
    found = []
    for entry in info.get("snapshots") or []:
        created = datetime.fromtimestamp(int(entry.get("date-sec", 0)), UTC)
        found.append(SnapshotInfo(name=entry["name"], memory=int(entry.get("vm-state-size", 0)) > 0,
                                  memory_bytes=int(entry.get("vm-state-size", 0)), created_at=created))
    return found


def list_snapshots(disk: Path, **run_as: Any) -> list[SnapshotInfo]:
    # -U: the disk may be open in a running QEMU; reading its snapshot table is safe.
    out = run_qemu_img(["info", "-U", "--output=json", "-f", "qcow2", str(disk)], what="list snapshots",
                    **run_as)
    return parse_snapshots(json.loads(out))


def create_offline(disk: Path, name: str, **run_as: Any) -> None:
    run_qemu_img(["snapshot", "-c", name, str(disk)], what=f"take snapshot '{name}'", **run_as)


def restore_offline(disk: Path, name: str, **run_as: Any) -> None:
    """Put a stopped VM's disk back to snapshot ``name``; it ends the backups' change tracking
    (see :func:`_forget_changes_live`)."""
    drop_backup_bitmaps(disk, f"restore snapshot '{name}'", **run_as)
    run_qemu_img(["snapshot", "-a", name, str(disk)], what=f"restore snapshot '{name}'", **run_as)


def drop_backup_bitmaps(disk: Path, what: str, **run_as: Any) -> None:
    """Remove the backups' dirty bitmaps from a disk no QEMU has open (QEMU loads no snapshot
    under them; and a copy of a disk has no backups of its own)."""
    out = run_qemu_img(["info", "--output=json", "-f", "qcow2", str(disk)], what="read the disk's bitmaps",
                       **run_as)
    bitmaps = (json.loads(out).get("format-specific") or {}).get("data", {}).get("bitmaps") or []
    for bitmap in bitmaps:
        if bitmap["name"].startswith(BITMAP_PREFIX):
            run_qemu_img(["bitmap", "--remove", str(disk), bitmap["name"]], what=what, **run_as)


def delete_offline(disk: Path, name: str, **run_as: Any) -> None:
    run_qemu_img(["snapshot", "-d", name, str(disk)], what=f"delete snapshot '{name}'", **run_as)


async def create_live(monitor: Monitor, guest_agent: GuestAgentChannel, name: str, *, memory: bool,
                      vm: str) -> bool:
    """Snapshot a running VM; returns whether the guest's filesystems were frozen for it."""
    node = await _disk_node(monitor, vm)
    if memory:
        # QEMU stops the vCPUs for the save itself: disk and memory are of one instant.
        await _job(monitor, "snapshot-save", {"tag": name, "vmstate": node, "devices": [node]}, vm)
        return False
    # The channel held from the freeze to the thaw: a frozen agent refuses most commands, and
    # the other callers' (an exec's polls) wait the moment instead.
    async with GuestAgent.exclusive(guest_agent) as agent:
        frozen = await _freeze(agent)
        try:
            await monitor.command("blockdev-snapshot-internal-sync", {"device": DRIVE_ID, "name": name})
        finally:
            if frozen:
                await agent.call("guest-fsfreeze-thaw")
    return frozen


async def restore_live(monitor: Monitor, name: str, *, vm: str) -> None:
    """Bring a memory snapshot back into the running VM (its disk and RAM)."""
    node = await _disk_node(monitor, vm)
    await _forget_changes_live(monitor, node)
    await _job(monitor, "snapshot-load", {"tag": name, "vmstate": node, "devices": [node]}, vm)


async def _forget_changes_live(monitor: Monitor, node: str) -> None:
    """Drop the backups' dirty bitmaps: QEMU refuses to load a snapshot under them ("Device has
    active dirty bitmaps"), and rightly, since a restore changes blocks they would not mark. The
    next incremental backup then says a full one is needed (node/backups.py)."""
    for entry in await monitor.command("query-named-block-nodes", {"flat": True}):
        if entry.get("node-name") == node:
            for bitmap in entry.get("dirty-bitmaps") or []:
                if bitmap["name"].startswith(BITMAP_PREFIX):
                    await monitor.command("block-dirty-bitmap-remove", {"node": node, "name": bitmap["name"]})


async def delete_live(monitor: Monitor, name: str, *, vm: str) -> None:
    node = await _disk_node(monitor, vm)
    await _job(monitor, "snapshot-delete", {"tag": name, "devices": [node]}, vm)


async def _disk_node(monitor: Monitor, vm: str) -> str:
    for device in await monitor.command("query-block"):
        if device.get("device") == DRIVE_ID and device.get("inserted"):
            return str(device["inserted"]["node-name"])
    raise OperationFailed(f"VM '{vm}' has no disk '{DRIVE_ID}' in QEMU")


async def _job(monitor: Monitor, cmd: str, arguments: dict[str, Any], vm: str) -> None:
    """Run a QMP job to its end; raise with QEMU's reason when it failed."""
    job_id = f"{cmd}-{time.monotonic_ns()}"
    await monitor.command(cmd, {"job-id": job_id, **arguments})
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        jobs = {j["id"]: j for j in await monitor.command("query-jobs")}
        job = jobs.get(job_id)
        if job is None:
            raise OperationFailed(f"QEMU lost the {cmd} job of VM '{vm}'")
        if job["status"] == "concluded":
            await monitor.command("job-dismiss", {"id": job_id})
            if job.get("error"):
                raise OperationFailed(f"{cmd} of VM '{vm}' failed: {job['error']}")
            return
        if time.monotonic() > deadline:
            raise OperationFailed(f"{cmd} of VM '{vm}' did not finish in {JOB_TIMEOUT_S:g}s")
        await asyncio.sleep(0.1)


async def _freeze(agent: GuestAgent) -> bool:
    """Freeze the guest's filesystems; False when it has no agent that can (then the snapshot
    is crash-consistent, like pulling the power)."""
    try:
        await asyncio.wait_for(agent.call("guest-fsfreeze-freeze"), FREEZE_TIMEOUT_S)
        return True
    except (GuestAgentError, TimeoutError, asyncio.TimeoutError):
        return False
