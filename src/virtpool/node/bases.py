"""Bases of linked clones: read-only qcow2 files in ``<data>/bases/``, shared and refcounted.

A linked clone's disk is a small qcow2 whose backing file is a base: the source VM's own data
at the cloned instant (its delta over its image's disk, which the base backs onto in turn).
The base is made once per source snapshot and shared by every linked clone of it, so each
further clone costs only its own writes. The base belongs to the clones, not to the source:
the source, or its snapshot, can be deleted and its clones keep working. A base goes when its
last clone is deleted.

Which VMs use a base is the agent's own record (``<id>.clones/<vm id>``, holding the uid the
clone's QEMU runs as), never read from a VM's disk header, which that VM's user may rewrite.
Only those uids may read the base (POSIX ACL, see sandbox/acl.py): a VM user who points its
own header at another tenant's base gets EACCES.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from virtpool.node.sandbox import acl

log = logging.getLogger(__name__)


class BaseStore:
    """The bases of this host's linked clones."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o711)  # clone users pass through to the base files they may read
        self._lock = threading.Lock()

    def path(self, base_id: str) -> Path:
        return self.dir / f"{base_id}.qcow2"

    def _records(self, base_id: str) -> Path:
        return self.dir / f"{base_id}.clones"

    def holds(self, file: str | Path) -> bool:
        """Whether ``file`` is a base of this store (a source disk may back onto one)."""
        path = Path(file)
        return path.parent == self.dir and path.suffix == ".qcow2" and path.is_file()

    def ensure(self, key: str, write: Callable[[Path], None]) -> str:
        """The base for ``key`` (e.g. a source VM's snapshot), made by ``write(tmp)`` if new."""
        base_id = hashlib.sha256(key.encode()).hexdigest()[:24]
        with self._lock:
            if not self.path(base_id).exists():
                tmp = self.dir / f".{base_id}.part"
                tmp.unlink(missing_ok=True)
                try:
                    write(tmp)
                    os.chmod(tmp, 0o600)
                    os.replace(tmp, self.path(base_id))
                finally:
                    tmp.unlink(missing_ok=True)
                self._records(base_id).mkdir(mode=0o700, exist_ok=True)
        return base_id

    def attach(self, base_id: str, vm_id: str) -> None:
        """Count ``vm_id`` among the base's clones (before its disk names the base)."""
        with self._lock:
            records = self._records(base_id)
            records.mkdir(mode=0o700, exist_ok=True)
            (records / vm_id).touch(mode=0o600)

    def base_of(self, vm_id: str) -> str | None:
        for record in self.dir.glob(f"*.clones/{vm_id}"):
            return record.parent.name.removesuffix(".clones")
        return None

    def grant(self, vm_id: str, uid: int) -> None:
        """Let the clone's QEMU (running as ``uid``) read its base; no-op for other VMs."""
        base_id = self.base_of(vm_id)
        if base_id is None:
            return
        with self._lock:
            (self._records(base_id) / vm_id).write_text(str(uid))
            self._apply_readers(base_id)

    def release(self, vm_id: str) -> None:
        """The VM is gone: it no longer reads its base, which goes with its last clone."""
        base_id = self.base_of(vm_id)
        if base_id is None:
            return
        with self._lock:
            (self._records(base_id) / vm_id).unlink(missing_ok=True)
            if any(self._records(base_id).iterdir()):
                self._apply_readers(base_id)
            else:
                self._remove(base_id)

    def clones_of(self, base_id: str) -> set[str]:
        records = self._records(base_id)
        return {p.name for p in records.iterdir()} if records.is_dir() else set()

    def sweep(self, live_vm_ids: set[str]) -> None:
        """At agent start: forget clones whose VM is gone, drop bases nobody uses and files a
        crash left half-made."""
        with self._lock:
            for part in self.dir.glob(".*.part"):
                part.unlink(missing_ok=True)
            for base in self.dir.glob("*.qcow2"):
                base_id = base.stem
                records = self._records(base_id)
                records.mkdir(mode=0o700, exist_ok=True)
                for record in records.iterdir():
                    if record.name not in live_vm_ids:
                        record.unlink(missing_ok=True)
                if not any(records.iterdir()):
                    log.info("removing base %s: no linked clone uses it", base_id)
                    self._remove(base_id)
                else:
                    self._apply_readers(base_id)

    def _apply_readers(self, base_id: str) -> None:
        uids = set()
        for record in self._records(base_id).iterdir():
            text = record.read_text().strip()
            if text.isdigit():
                uids.add(int(text))
        if os.geteuid() == 0:  # unprivileged, every QEMU runs as this user, who owns the base
            acl.set_readers(self.path(base_id), uids)

    def _remove(self, base_id: str) -> None:
        self.path(base_id).unlink(missing_ok=True)
        shutil.rmtree(self._records(base_id), ignore_errors=True)
