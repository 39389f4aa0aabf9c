"""The audit log: written for every mutating API request and every automatic decision."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.store.tables import AuditRow
from virtpool.model.audit import AuditEntry

MAX_TEXT = 255


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def record(self, actor: str, action: str, target: str | None, outcome: str, *,
               project_id: str | None = None) -> None:
        with self._sessions.begin() as session:
            session.add(AuditRow(actor=actor[:63], action=action[:128], project_id=project_id,
                                 target=target[:MAX_TEXT] if target else None, outcome=outcome[:MAX_TEXT]))

    def count(self, row_id: int | None, actor: str, action: str, target: str | None,
              outcome: str) -> int:
        """Write a row that aggregates many happenings (first call, ``row_id`` None) or bring
        its ``outcome`` up to date; return the row's id."""
        with self._sessions.begin() as session:
            row = session.get(AuditRow, row_id) if row_id is not None else None
            if row is None:
                row = AuditRow(actor=actor[:63], action=action[:128],
                               target=target[:MAX_TEXT] if target else None, outcome=outcome[:MAX_TEXT])
                session.add(row)
            else:
                row.outcome = outcome[:MAX_TEXT]
            session.flush()
            return row.id

    def list(self, *, since: datetime | None = None, after: int = 0, limit: int = 100,
             project_id: str | None = None) -> list[AuditEntry]:
        """Entries oldest first; one project's when ``project_id`` is given (pool-wide actions
        have none, so only pool admins see them)."""
        query = select(AuditRow).where(AuditRow.id > after).order_by(AuditRow.id).limit(limit)
        if since is not None:
            query = query.where(AuditRow.time >= since)
        if project_id is not None:
            query = query.where(AuditRow.project_id == project_id)
        with self._sessions() as session:
            return [AuditEntry(id=r.id, time=r.time, actor=r.actor, project=r.project_id, action=r.action,
                               target=r.target, outcome=r.outcome) for r in session.scalars(query)]
