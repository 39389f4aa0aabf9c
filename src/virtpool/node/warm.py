"""Warm copies: disks made ahead of time for VMs that start from a memory snapshot.

``vm create --from-snapshot SRC:SNAP`` needs a disk of its own that holds the snapshot (RAM
included), which is a byte copy of the source's disk: the part of an instant start that is not
instant. With the pool setting ``warm_copies`` N, the host keeps N such copies of each snapshot
that VMs were created from (``<data>/warm/<source id>/<snapshot>@<taken>/<n>.qcow2``, root's,
0600), a create takes one (a rename), and a background thread makes the next. A snapshot taken
again under the same name is another key (its time is in it), so a stale copy is never handed
out; the source's copies go with the source or its snapshot.

A copy is made only while the source is stopped (its running QEMU rewrites the qcow2's tables),
under a per-source lock that a start of the source waits for.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class WarmCopies:
    """Ready copies per (source VM, snapshot)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._lock = threading.Lock()
        self._source_locks: dict[str, threading.Lock] = {}
        self._refilling: set[tuple[str, str]] = set()

    def source_lock(self, source_vm_id: str) -> threading.Lock:
        """Held while a copy of the source's disk is made: its start waits for it."""
        with self._lock:
            return self._source_locks.setdefault(source_vm_id, threading.Lock())

    def _key_dir(self, source_vm_id: str, key: str) -> Path:
        return self.dir / source_vm_id / key

    def ready(self, source_vm_id: str, key: str) -> list[Path]:
        directory = self._key_dir(source_vm_id, key)
        return sorted(directory.glob("*.qcow2")) if directory.is_dir() else []

    def take(self, source_vm_id: str, key: str, target: Path) -> bool:
        """Move a ready copy to ``target``; False when there is none."""
        with self._lock:
            for copy in self.ready(source_vm_id, key):
                os.replace(copy, target)
                return True
        return False

    def refill(self, source_vm_id: str, key: str, count: int, make: Callable[[Path], None],
               source_idle: Callable[[], bool]) -> None:
        """In the background: make copies until ``count`` are ready (and drop older keys'
        copies of this source's snapshot, which no create asks for any more)."""
        with self._lock:
            if (source_vm_id, key) in self._refilling:
                return
            self._refilling.add((source_vm_id, key))
        threading.Thread(target=self._refill, args=(source_vm_id, key, count, make, source_idle),
                         name=f"warm-{source_vm_id[:8]}", daemon=True).start()

    def _refill(self, source_vm_id: str, key: str, count: int, make: Callable[[Path], None],
                source_idle: Callable[[], bool]) -> None:
        snapshot = key.rpartition("@")[0]
        try:
            for old in (self.dir / source_vm_id).glob(f"{snapshot}@*"):
                if old.name != key:
                    shutil.rmtree(old, ignore_errors=True)
            directory = self._key_dir(source_vm_id, key)
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            while len(self.ready(source_vm_id, key)) < count:
                with self.source_lock(source_vm_id):
                    if not source_idle() or not directory.is_dir():
                        return  # the source runs, or went: refilled by the next create
                    part = directory / f".{os.urandom(6).hex()}.part"
                    try:
                        make(part)
                        os.replace(part, directory / f"{os.urandom(6).hex()}.qcow2")
                    finally:
                        part.unlink(missing_ok=True)
        except Exception:  # the next create copies by itself; nothing else depends on this
            log.exception("could not make a warm copy of snapshot %s of VM %s", key, source_vm_id)
        finally:
            with self._lock:
                self._refilling.discard((source_vm_id, key))

    def forget(self, source_vm_id: str, snapshot: str | None = None) -> None:
        """The source (or its snapshot) went: its copies go too."""
        with self.source_lock(source_vm_id):
            if snapshot is None:
                shutil.rmtree(self.dir / source_vm_id, ignore_errors=True)
            else:
                for old in (self.dir / source_vm_id).glob(f"{snapshot}@*"):
                    shutil.rmtree(old, ignore_errors=True)
