"""Backups of a running VM's disk into a directory: a full copy, then incrementals, each a
qcow2 file, tracked by persistent dirty bitmaps in the VM's own qcow2.

Checkpoints: every backup adds a new persistent bitmap ("virtpool-backup-N") at the very
instant its copy starts (one QMP transaction), and the copy reads what the previous bitmap
marked. Only when the copy is whole on the target is the previous bitmap dropped; when it
fails, the new bitmap is merged back into the previous one, so no write is ever lost from the
next incremental and the target directory is left as it was: a half backup never stays.

QEMU runs as the VM's user and never opens the target path itself: the agent (root) creates
the file and hands QEMU an open descriptor (``add-fd``), so a backup directory needs no
permissions for the VM's user and QEMU can write nothing else there.

The chain is described by ``chain.json`` in the directory; a restore checks that every file
is a plain qcow2 whose backing file is exactly its predecessor before reading anything.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError

from virtpool.model.backup import BackupFile, BackupInfo
from virtpool.model.errors import (
    Conflict,
    InsufficientResources,
    InvalidRequest,
    NotFound,
    OperationFailed,
)
from virtpool.node.disks import QCOW2_MAGIC, run_qemu_img
from virtpool.node.qemu.argv import DRIVE_ID

CHAIN_FILE = "chain.json"
BITMAP_PREFIX = "virtpool-backup-"
TARGET_NODE = "virtpool-backup-target"
JOB_TIMEOUT_S = 3600.0


# -- the chain in the target directory (pure where it can be) ----------------------------


def read_chain(directory: Path) -> BackupInfo:
    path = directory / CHAIN_FILE
    try:
        return BackupInfo.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"{directory} holds no virtpool backup (no {CHAIN_FILE})",
                       hint="take a full backup into an empty directory first") from None
    except ValueError as err:
        raise InvalidRequest(f"{path} is not a virtpool backup chain: {err}") from err


def _write_chain(directory: Path, chain: BackupInfo) -> None:
    tmp = directory / f".{CHAIN_FILE}.tmp"
    tmp.write_text(chain.model_dump_json(indent=2))
    os.replace(tmp, directory / CHAIN_FILE)


def check_target(directory: Path, *, incremental: bool) -> None:
    """A full backup needs an empty (or new) writable directory; an incremental, a chain."""
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise InvalidRequest(f"{directory} is not a directory", hint="name a directory for the backup")
    if incremental:
        read_chain(directory)
    elif directory.exists() and any(directory.iterdir()):
        raise Conflict(f"{directory} is not empty; a full backup starts a chain in an empty directory",
                       hint="pick a new or empty directory, or add --incremental to extend its chain")
    parent = directory if directory.exists() else directory.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidRequest(f"{parent} is not writable", hint="pick a directory this host can write")


def qcow2_backing_name(head: bytes) -> str | None:
    """The backing file named in a qcow2 header (None without one). Pure."""
    if not head.startswith(QCOW2_MAGIC) or len(head) < 20:
        raise InvalidRequest("not a qcow2 file")
    offset = int.from_bytes(head[8:16], "big")
    length = int.from_bytes(head[16:20], "big")
    if not offset:
        return None
    return head[offset:offset + length].decode(errors="replace")


def verify_chain(directory: Path, chain: BackupInfo) -> Path:
    """Check each file of the chain; return the newest (what a restore reads)."""
    previous: str | None = None
    for entry in chain.files:
        path = directory / entry.file
        if "/" in entry.file or entry.file.startswith("."):
            raise InvalidRequest(f"backup chain names a file outside its directory: {entry.file!r}")
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise InvalidRequest(f"{path} is not a regular file; refusing the chain")
        with path.open("rb") as handle:
            backing = qcow2_backing_name(handle.read(65536))
        if backing != previous:
            raise InvalidRequest(f"{path} is backed by {backing!r}, not by {previous!r}: not this chain",
                                 hint="restore from an untouched backup directory")
        previous = entry.file
    if previous is None:
        raise InvalidRequest(f"the backup chain in {directory} is empty")
    return directory / previous


def restore(directory: Path, disk: Path, **run_as: Any) -> None:
    """Write the chain's newest state into ``disk`` (a new, flat qcow2)."""
    top = verify_chain(directory, read_chain(directory))
    run_qemu_img(["convert", "-q", "-f", "qcow2", "-O", "qcow2", str(top), str(disk)],
                 what=f"restore the backup in {directory}", **run_as)


# -- taking a backup of a running VM -------------------------------------------------------


async def backup(client: Any, directory: Path, *, vm_id: str, vm: str, image: str,
                 incremental: bool) -> BackupInfo:
    """``client``: the VM's own QMP session's client (node/vm.py): the only one its QEMU serves."""
    check_target(directory, incremental=incremental)
    chain = read_chain(directory) if incremental else None
    if chain is not None and chain.vm_id != vm_id:
        raise Conflict(f"the chain in {directory} is of another VM ({chain.vm})",
                       hint="extend a chain of this VM, or start one in an empty directory")
    created_dir = not directory.exists()
    target: Path | None = None
    try:
        node, disk_bytes = await _disk_node(client, vm)
        if chain is None:
            chain = BackupInfo(vm_id=vm_id, vm=vm, image=image, disk_bytes=disk_bytes, files=[])
        previous = chain.files[-1] if chain.files else None
        if previous is not None and previous.bitmap not in await _bitmaps(client, node):
            raise Conflict(f"VM '{vm}' no longer tracks changes since its last backup "
                           "(its QEMU was killed, its disk replaced, or a snapshot restored)",
                           hint="take a full backup into a new, empty directory")
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as err:
            raise InvalidRequest(f"cannot create the backup directory {directory}: {err.strerror}",
                                 hint="pick a directory this host can write") from None
        index = len(chain.files)
        name = f"{index:04d}-{'incremental' if incremental else 'full'}.qcow2"
        target = directory / name
        args = ["create", "-q", "-f", "qcow2"]
        if previous is not None:
            # Relative and unchecked (-u): QEMU never opens it; a restore verifies it by name.
            args += ["-u", "-b", previous.file, "-F", "qcow2"]
        run_qemu_img([*args, str(target), str(disk_bytes)], what="create the backup file")
        bitmap = f"{BITMAP_PREFIX}{index}"
        await _copy(client, node, target, bitmap, previous.bitmap if previous else None)
        chain.files.append(BackupFile(file=name, kind="incremental" if incremental else "full",
                                      bitmap=bitmap, bytes=target.stat().st_size,
                                      created_at=datetime.now(UTC)))
        _write_chain(directory, chain)
        # Only now is the new checkpoint the one to count from: drop the previous (and any
        # older chain's). Until here the previous one kept tracking every write as well.
        stale = [b for b in await _bitmaps(client, node) if b.startswith(BITMAP_PREFIX) and b != bitmap]
        for old in stale:
            await client.execute("block-dirty-bitmap-remove", {"node": node, "name": old})
    except BaseException:
        (directory / f".{CHAIN_FILE}.tmp").unlink(missing_ok=True)
        if target is not None:
            target.unlink(missing_ok=True)
        if created_dir and directory.is_dir():
            (directory / CHAIN_FILE).unlink(missing_ok=True)
            directory.rmdir()
        raise
    return chain


async def _copy(client: Any, node: str, target: Path, bitmap: str, since: str | None) -> None:
    """Copy the disk (all of it, or what ``since`` marked) into ``target`` through an fd."""
    fd = os.open(target, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    fdset = None
    added_node = False
    try:
        client.send_fd_scm(fd)
        fdset = (await client.execute("add-fd", {}))["fdset-id"]
        await client.execute("blockdev-add", {
            "driver": "qcow2", "node-name": TARGET_NODE, "backing": None,
            "file": {"driver": "file", "filename": f"/dev/fdset/{fdset}"}})
        added_node = True
        job = f"backup-{time.monotonic_ns()}"
        copy: dict[str, Any] = {"job-id": job, "device": node, "target": TARGET_NODE,
                                "auto-dismiss": False, "sync": "full"}
        if since is not None:
            # "never": the previous bitmap stays as it was until the copy is known good.
            copy.update(sync="bitmap", bitmap=since, **{"bitmap-mode": "never"})
        await client.execute("transaction", {"actions": [
            {"type": "block-dirty-bitmap-add",
             "data": {"node": node, "name": bitmap, "persistent": True}},
            {"type": "blockdev-backup", "data": copy}]})
        error = await _wait(client, job)
        if error is not None:
            # Give the new checkpoint's marks back to the old one: nothing is lost for the next try.
            if since is not None:
                await client.execute("block-dirty-bitmap-merge",
                                     {"node": node, "target": since, "bitmaps": [bitmap]})
            await client.execute("block-dirty-bitmap-remove", {"node": node, "name": bitmap})
            message = (f"the backup failed: {error}; nothing of it was kept, the VM keeps running "
                       "and its next backup still covers every change")
            if "No space left" in error:  # the target the user picked is full: their input
                raise InsufficientResources(message, hint="free space on the backup target, or pick "
                                            "another directory, and try again")
            raise OperationFailed(message, hint="see the agent's log; try again")
    except ExecuteError as err:
        raise OperationFailed(f"QEMU refused the backup: {err.error.error.desc}") from err
    finally:
        if added_node:
            await _quietly(client, "blockdev-del", {"node-name": TARGET_NODE})
        if fdset is not None:
            await _quietly(client, "remove-fd", {"fdset-id": fdset})
        os.close(fd)


async def _wait(client: Any, job: str) -> str | None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        jobs = {j["id"]: j for j in await client.execute("query-jobs")}
        current = jobs.get(job)
        if current is None:
            return "QEMU lost the backup job"
        if current["status"] == "concluded":
            await client.execute("job-dismiss", {"id": job})
            return current.get("error")
        if time.monotonic() > deadline:
            await _quietly(client, "job-cancel", {"id": job})
            return f"it did not finish in {JOB_TIMEOUT_S:g}s"
        await asyncio.sleep(0.1)


async def _disk_node(client: Any, vm: str) -> tuple[str, int]:
    """The disk's block node and its virtual size."""
    for device in await client.execute("query-block"):
        if device.get("device") == DRIVE_ID and device.get("inserted"):
            inserted = device["inserted"]
            return str(inserted["node-name"]), int(inserted["image"]["virtual-size"])
    raise OperationFailed(f"VM '{vm}' has no disk '{DRIVE_ID}' in QEMU")


async def _bitmaps(client: Any, node: str) -> list[str]:
    for entry in await client.execute("query-named-block-nodes", {"flat": True}):
        if entry.get("node-name") == node:
            return [b["name"] for b in entry.get("dirty-bitmaps") or []]
    return []


async def _quietly(client: Any, cmd: str, arguments: dict[str, Any]) -> None:
    try:
        await client.execute(cmd, arguments)
    except ExecuteError:
        pass

