"""The pool's event log: written by the services, read by `virtpool events` and the API.

The database is the record (and what a reader replays from); listeners registered in this
process hear of each event as soon as it is committed, so that streams and operations follow
without polling.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.store.tables import EventRow
from virtpool.model.event import Event

log = logging.getLogger(__name__)

Listener = Callable[[Event], None]
# The advisory lock that orders event inserts on PostgreSQL (any constant of our own).
EVENTS_LOCK_KEY = 0x76706576


class EventLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def record(self, kind: str, message: str, *, actor: str = "virtpool", vm: str | None = None,
               project_id: str | None = None, data: dict[str, Any] | None = None) -> Event:
        with self._sessions.begin() as session:
            if session.get_bind().dialect.name == "postgresql":
                # Ids come from a sequence, but transactions commit in any order, and readers
                # take every id below the last one they saw as delivered: one writer at a time
                # (until its commit) keeps ids in commit order. SQLite writers are serial anyway.
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": EVENTS_LOCK_KEY})
            row = EventRow(kind=kind, actor=actor, vm=vm, project_id=project_id, message=message, data=data)
            session.add(row)
            session.flush()
            event = _event(row)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # one broken listener must not stop the others or the writer
                log.exception("event listener failed")
        return event

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every event recorded from now on; returns the unsubscribe."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def list(self, *, after: int = 0, kind: str | None = None, vm: str | None = None,
             project_id: str | None = None, limit: int = 100) -> list[Event]:
        """Events with an id above ``after``, oldest first (so that a reader can follow on);
        one project's when ``project_id`` is given (pool-wide events have none)."""
        query = select(EventRow).where(EventRow.id > after).order_by(EventRow.id).limit(limit)
        if project_id is not None:
            query = query.where(EventRow.project_id == project_id)
        if kind is not None:
            query = query.where(EventRow.kind.startswith(kind))
        if vm is not None:
            query = query.where(EventRow.vm == vm)
        with self._sessions() as session:
            return [_event(r) for r in session.scalars(query)]


def _event(row: EventRow) -> Event:
    return Event(id=row.id, time=row.time, kind=row.kind, actor=row.actor, vm=row.vm,
                 project=row.project_id, message=row.message, data=row.data)
