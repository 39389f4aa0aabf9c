"""Counts across the pool's records, read in one query each: VMs by state, operations by
outcome, and where the newest events start. For the dashboard's overview and for /metrics."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.store.tables import EventRow, OperationRow, VMRow


class Summary:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def vms_by_state(self, project_id: str | None = None) -> dict[tuple[str, str], int]:
        """(project, state) → number of VMs; one project's, or every project's."""
        query = select(VMRow.project_id, VMRow.state, func.count()).group_by(VMRow.project_id, VMRow.state)
        if project_id is not None:
            query = query.where(VMRow.project_id == project_id)
        with self._sessions() as session:
            return {(project, state): n for project, state, n in session.execute(query)}

    def operations_by_status(self, project_id: str | None = None) -> dict[tuple[str | None, str], int]:
        """(project, status) → number of operations recorded."""
        query = (select(OperationRow.project_id, OperationRow.status, func.count())
                 .group_by(OperationRow.project_id, OperationRow.status))
        if project_id is not None:
            query = query.where(OperationRow.project_id == project_id)
        with self._sessions() as session:
            return {(project, status): n for project, status, n in session.execute(query)}

    def event_cursor(self, back: int, project_id: str | None = None) -> int:
        """The event id after which the last ``back`` events in view follow (0: from the start)."""
        query = select(EventRow.id).order_by(EventRow.id.desc()).offset(back).limit(1)
        if project_id is not None:
            query = query.where(EventRow.project_id == project_id)
        with self._sessions() as session:
            return session.scalar(query) or 0
