"""Placement groups of a project: their VMs run on one host (affinity) or apart (anti-affinity).

The rule itself is the scheduler's (``scheduler/filters.py``, ``weighers.py``); this service
keeps the groups. A group with VMs cannot be deleted: its rule would silently stop holding.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.placement import group_by_name
from virtpool.control.store.tables import GroupRow, VMRow
from virtpool.model.errors import Conflict
from virtpool.model.inventory import GroupSpec, GroupView


class GroupService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def create(self, project_id: str, spec: GroupSpec) -> GroupView:
        try:
            with self._sessions.begin() as session:
                session.add(GroupRow(id=uuid.uuid4().hex, project_id=project_id, name=spec.name,
                                     policy=spec.policy, hard=spec.hard))
        except IntegrityError as err:
            raise Conflict(f"a group named '{spec.name}' exists", hint="pick another name") from err
        return self.get(project_id, spec.name)

    def list(self, project_id: str) -> Sequence[GroupView]:
        with self._sessions() as session:
            rows = session.scalars(select(GroupRow).where(GroupRow.project_id == project_id)
                                   .order_by(GroupRow.name)).all()
            return [self._view(session, row) for row in rows]

    def get(self, project_id: str, name: str) -> GroupView:
        with self._sessions() as session:
            return self._view(session, group_by_name(session, project_id, name))

    def delete(self, project_id: str, name: str) -> None:
        """Delete a group that has no VMs; refuse (naming them) while it has."""
        with self._sessions.begin() as session:
            row = group_by_name(session, project_id, name)
            # Locked first (a new member's foreign key waits on it, or is seen below): on
            # PostgreSQL a statement that waited for a lock would keep its older snapshot.
            session.execute(select(GroupRow.id).where(GroupRow.id == row.id).with_for_update())
            members = self._members(session, row)
            gone = session.execute(
                GroupRow.__table__.delete().where(
                    GroupRow.id == row.id, ~exists().where(VMRow.group_id == row.id))).rowcount
        if not gone:
            names = ", ".join(sorted(members)) or "a VM being created"
            raise Conflict(f"group '{name}' still has VMs: {names}",
                           hint="delete them first; their placement rule would stop holding")

    @staticmethod
    def _members(session: Session, row: GroupRow) -> dict[str, str]:
        return dict(session.execute(select(VMRow.name, VMRow.host)
                                    .where(VMRow.group_id == row.id)
                                    .order_by(VMRow.name)).all())

    def _view(self, session: Session, row: GroupRow) -> GroupView:
        return GroupView(name=row.name, policy=row.policy, hard=row.hard,  # type: ignore[arg-type]
                         project=row.project_id, members=self._members(session, row))
