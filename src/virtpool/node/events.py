"""The agent's event feed: what happened to VMs on this host, kept on disk, read by cursor.

Each event gets the next sequence number and is appended to ``events.jsonl`` in the data dir
before anyone can read it, so a reader that asks for "after N" gets every event since N even
across a restart of the agent (the file is read back at start) or of the reader (it keeps N).
The file keeps the newest ``keep`` events; a reader further behind starts at the oldest kept.

A full disk must not silence the feed: that is when its news matters (a guest paused because
the disk filled). So the file keeps ``RESERVE_BYTES`` allocated past its end (fallocate with
FALLOC_FL_KEEP_SIZE), topped up after each event while there is room; an append lands in
those blocks and needs none from the full filesystem.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from virtpool.model.agent import AgentEvent, EventKind

log = logging.getLogger(__name__)

DEFAULT_KEEP = 10_000  # events kept on disk; a day of a busy host's exits and balloon moves
RESERVE_BYTES = 1 << 20  # ~3,000 events' worth, kept allocated for a full disk
FALLOC_FL_KEEP_SIZE = 0x01  # linux/falloc.h
_libc = ctypes.CDLL(None, use_errno=True)


class EventFeed:
    """Append-only, persisted, waitable."""

    def __init__(self, path: Path, *, keep: int = DEFAULT_KEEP) -> None:
        self._path = path
        self._keep = keep
        self._changed = threading.Condition()
        self._released = False
        self._events: list[AgentEvent] = self._load()
        self._next = self._events[-1].seq + 1 if self._events else 1
        self._reserve()

    def _load(self) -> list[AgentEvent]:
        events: list[AgentEvent] = []
        try:
            text = self._path.read_text()
        except FileNotFoundError:
            return events
        for line in text.splitlines():
            try:
                events.append(AgentEvent.model_validate_json(line))
            except ValueError:
                # A line cut short by a crash mid-write: what came before it is whole.
                log.warning("skipping a damaged line of %s", self._path)
        return events[-self._keep:]

    def append(self, kind: EventKind, vm_id: str, data: dict[str, Any] | None = None) -> AgentEvent:
        """Record an event (on disk before it is visible) and wake the readers."""
        with self._changed:
            event = AgentEvent(seq=self._next, kind=kind, vm_id=vm_id, at=datetime.now(UTC),
                               data=data or {})
            line = event.model_dump_json() + "\n"
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
                _keep_room(fd)
            finally:
                os.close(fd)
            self._next += 1
            self._events.append(event)
            if len(self._events) > 2 * self._keep:
                self._compact()
            self._changed.notify_all()
            return event

    def _compact(self) -> None:
        self._events = self._events[-self._keep:]
        staging = self._path.with_suffix(".tmp")
        try:
            staging.write_text("".join(e.model_dump_json() + "\n" for e in self._events))
        except OSError as err:  # a full disk: the long file stays until there is room
            log.warning("could not compact %s: %s", self._path, err)
            staging.unlink(missing_ok=True)
            return
        os.replace(staging, self._path)
        self._reserve()

    def _reserve(self) -> None:
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            log.warning("cannot keep room for %s: %s", self._path, err)
            return
        try:
            _keep_room(fd)
        finally:
            os.close(fd)

    def read(self, after: int, wait: float = 0.0) -> list[AgentEvent]:
        """Events with seq > ``after``; waits up to ``wait`` s for one when there are none."""
        deadline = time.monotonic() + max(0.0, wait)
        with self._changed:
            while True:
                found = [e for e in self._events if e.seq > after] if self._next - 1 > after else []
                remaining = deadline - time.monotonic()
                if found or remaining <= 0 or self._released:
                    return found
                self._changed.wait(remaining)

    def release_readers(self) -> None:
        """Answer every waiting read now, and every later one without waiting: the agent is
        stopping, and a reader's long poll must not hold its stop off."""
        with self._changed:
            self._released = True
            self._changed.notify_all()

    @property
    def last_seq(self) -> int:
        return self._next - 1


def _keep_room(fd: int) -> None:
    """Keep ``RESERVE_BYTES`` allocated past the file's end (from half of it, top it up);
    without room now, or on a filesystem without fallocate, appends simply allocate as usual."""
    info = os.fstat(fd)
    if info.st_blocks * 512 - info.st_size >= RESERVE_BYTES // 2:
        return
    if _libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_int64(info.st_size),
                       ctypes.c_int64(RESERVE_BYTES)) != 0:
        code = ctypes.get_errno()
        if code not in (errno.ENOSPC, errno.EOPNOTSUPP, errno.ENOSYS):
            log.warning("cannot keep room for the event feed: %s", os.strerror(code))
