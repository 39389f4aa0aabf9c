"""Projects (tenants): create, list, show, delete, and their quotas.

A project's name is its id (permanent), so that audit entries, events and operations name it
readably without a join.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control import quotas
from virtpool.control.store.tables import DEFAULT_PROJECT, ProjectRow, TokenRow, VMRow
from virtpool.model.errors import Conflict, InvalidRequest
from virtpool.model.project import (
    PROJECT_NAME_RULE,
    ProjectInfo,
    Quota,
    QuotaResult,
    project_name_problem,
)
from virtpool.model.roles import not_found_project

KNOWN_TTL_S = 2.0
MAX_KNOWN = 10_000


class ProjectService:
    """``on_delete(name)`` is called once a project (and so its tokens) is deleted."""

    def __init__(self, sessions: sessionmaker[Session], *,
                 on_delete: Callable[[str], None] = lambda name: None) -> None:
        self._sessions = sessions
        self._on_delete = on_delete
        self._known: dict[str, float] = {}  # project -> when it was last seen to exist

    def create(self, name: str, quota: Quota | None = None) -> ProjectInfo:
        problem = project_name_problem(name)
        if problem:
            raise InvalidRequest(problem, hint=PROJECT_NAME_RULE)
        quota = quota or Quota()
        row = ProjectRow(id=name, name=name, **_quota_columns(quota.model_dump()))
        try:
            with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError as err:
            raise Conflict(f"a project named '{name}' exists", hint="pick another name") from err
        return self.get(name)

    def list(self, only: str | None = None) -> list[ProjectInfo]:
        """Every project, or just ``only`` (what a project-scoped token may see)."""
        query = select(ProjectRow).order_by(ProjectRow.name)
        if only is not None:
            query = query.where(ProjectRow.id == only)
        with self._sessions() as session:
            return [_info(row) for row in session.scalars(query)]

    def get(self, name: str) -> ProjectInfo:
        with self._sessions() as session:
            return _info(_row(session, name))

    def exists(self, name: str) -> bool:
        """Whether project ``name`` exists. Every request of a pool admin asks: a project seen
        in the last ``KNOWN_TTL_S`` is taken to exist without a query (this process forgets it
        when it deletes it; a deletion elsewhere leaves an empty project answering for that
        long, since a project with VMs cannot be deleted)."""
        now = time.monotonic()
        seen = self._known.get(name)
        if seen is not None and now - seen < KNOWN_TTL_S:
            return True
        with self._sessions() as session:
            found = session.execute(select(ProjectRow.id).where(ProjectRow.id == name)).first()
        if found is None:
            return False
        if len(self._known) >= MAX_KNOWN:
            self._known.clear()
        self._known[name] = now
        return True

    def delete(self, name: str) -> None:
        """Delete an empty project and its tokens; refused while it has VMs."""
        if name == DEFAULT_PROJECT:
            raise Conflict("the default project cannot be deleted",
                           hint="it holds VMs created without a project")
        with self._sessions.begin() as session:
            _row(session, name, lock=True)
            vms = session.scalar(select(func.count()).select_from(VMRow).where(VMRow.project_id == name))
            if vms:
                raise Conflict(
                    f"project '{name}' still has {vms} VM{'s' if vms != 1 else ''}",
                    hint=f"delete them first (`virtpool --project {name} vm list`)")
            session.execute(delete(TokenRow).where(TokenRow.project_id == name))
            session.execute(delete(ProjectRow).where(ProjectRow.id == name))
        self._known.pop(name, None)
        self._on_delete(name)

    def set_quota(self, name: str, changes: dict[str, Any]) -> QuotaResult:
        """Change the quotas named in ``changes`` (None: unlimited); the others stay.

        A quota below current usage is allowed: nothing running is touched, but no VM of the
        project may be created or grown until usage falls under it.
        """
        checked = Quota.model_validate(changes)
        columns = _quota_columns({k: getattr(checked, k) for k in changes})
        with self._sessions.begin() as session:
            row = _row(session, name, lock=True)
            for key, value in columns.items():
                setattr(row, key, value)
            session.flush()
            info, notes = _info(row), quotas.over_quota_notes(row)
        return QuotaResult(project=info, notes=notes)


def _row(session: Session, name: str, *, lock: bool = False) -> ProjectRow:
    query = select(ProjectRow).where(ProjectRow.id == name)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise not_found_project(name)
    return row


def _quota_columns(quota: dict[str, Any]) -> dict[str, Any]:
    by_field = {res.field: res.quota.key for res in quotas.RESOURCES}
    return {by_field[key]: value for key, value in quota.items()}


def _info(row: ProjectRow) -> ProjectInfo:
    return ProjectInfo(name=row.name, quota=quotas.quota_of(row), usage=quotas.usage_of(row),
                       created_at=row.created_at)
