"""The pool's event log: written by the services, read by `virtpool events` and the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.store.tables import EventRow
from virtpool.model.event import Event


class EventLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def record(self, kind: str, message: str, *, actor: str = "virtpool", vm: str | None = None,
               data: dict[str, Any] | None = None, project_id: str | None = None) -> None:
        with self._sessions.begin() as session:
            session.add(EventRow(kind=kind, actor=actor, vm=vm, message=message, data=data,
                                 project_id=project_id))

    def list(self, *, after: int = 0, kind: str | None = None, vm: str | None = None,
             limit: int = 100, project_id: str | None = None) -> list[Event]:
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
            return [Event(id=r.id, time=r.time, kind=r.kind, actor=r.actor, vm=r.vm,
                          message=r.message, data=r.data) for r in session.scalars(query)]
