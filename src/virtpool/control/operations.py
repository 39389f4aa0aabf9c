"""Operations: the record of long actions, so that a client can follow one to its end.

An operation is written before the work it describes starts and is finished (succeeded or
failed) by whoever does that work: the process whose instance id it records as its owner.
Waiters in this process are woken on every change; a change made by another process sharing
the database is seen at the next bounded recheck.

Several control-plane processes (`virtpool up` on several hosts, several `virtpool server`s)
may share one database. Each has an instance id kept in its data dir, the same across its
restarts and different from every other's, so that a restart fails only what it left
unfinished itself.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.changes import Changes
from virtpool.control.store.tables import OperationRow, utcnow
from virtpool.model.errors import NotFound
from virtpool.model.operation import FINISHED, Operation

INTERRUPTED = ("virtpool restarted while this operation ran, so its outcome was not recorded; "
               "look at its target to see where it got to, and ask again if needed")


INSTANCE_FILE = "instance.id"


def instance_id(data_dir: Path) -> str:
    """This control-plane process's owner id: made on its data dir's first start, then kept."""
    path = data_dir / INSTANCE_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as existing:
            value = existing.read(64).strip()
        if value:
            return value
        path.unlink()  # an empty file: a crash between create and write; make it again
        return instance_id(data_dir)
    value = uuid.uuid4().hex
    with os.fdopen(fd, "w") as made:
        made.write(value + "\n")
    return value


class OperationService:
    def __init__(self, sessions: sessionmaker[Session], owner: str | None = None) -> None:
        self._sessions = sessions
        self._changes = Changes()
        self.owner = owner or uuid.uuid4().hex  # tests without a data dir: a one-off owner

    def begin(self, kind: str, target: str | None, *, actor: str, project_id: str | None = None,
              message: str | None = None) -> Operation:
        """Record a new running operation, owned by this process."""
        row = OperationRow(id=uuid.uuid4().hex, kind=kind, target=target, project_id=project_id,
                           actor=actor, status="running", progress=0, message=message,
                           owner=self.owner)
        with self._sessions.begin() as session:
            session.add(row)
        self._changes.notify()
        return _operation(row)

    def progress(self, op_id: str, progress: int, message: str | None = None) -> None:
        """Move an unfinished operation on (never backwards, never after it finished)."""
        values: dict[str, Any] = {"progress": max(0, min(progress, 99)), "updated_at": utcnow()}
        if message is not None:
            values["message"] = message
        self._write(op_id, values, OperationRow.progress <= values["progress"])

    def succeed(self, op_id: str, message: str | None = None, result: dict[str, Any] | None = None) -> None:
        self._write(op_id, {"status": "succeeded", "progress": 100, "message": message, "result": result,
                            "updated_at": utcnow()})

    def fail(self, op_id: str, error: str) -> None:
        self._write(op_id, {"status": "failed", "error": error, "message": "failed", "updated_at": utcnow()})

    def _write(self, op_id: str, values: dict[str, Any], *conditions: Any) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(OperationRow)
                .where(OperationRow.id == op_id, OperationRow.status.not_in(FINISHED), *conditions)
                .values(**values))
        self._changes.notify()

    def fail_interrupted(self, keep: Collection[str] = ()) -> int:
        """At start: the operations this process's previous run left unfinished can never
        finish (but those in ``keep``, which it carries on). Other processes' operations are
        theirs to finish; those recorded before operations had owners are failed too."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(OperationRow)
                .where(OperationRow.status.in_(["pending", "running"]), OperationRow.id.not_in(list(keep)),
                       or_(OperationRow.owner == self.owner, OperationRow.owner.is_(None)))
                .values(status="failed", error=INTERRUPTED, message="interrupted", updated_at=utcnow()))
        return result.rowcount

    def get(self, op_id: str, project_id: str | None = None) -> Operation:
        """An operation; within ``project_id`` when given (another project's is not found)."""
        with self._sessions() as session:
            row = session.get(OperationRow, op_id)
            if row is None or (project_id is not None and row.project_id != project_id):
                raise NotFound(f"no operation '{op_id}'", hint="see `virtpool operation list`")
            return _operation(row)

    def list(self, *, project_id: str | None = None, status: str | None = None,
             kind: str | None = None, target: str | None = None, owner: str | None = None,
             limit: int = 50) -> list[Operation]:
        """The most recent operations first (``owner``: only those of that process)."""
        query = select(OperationRow).order_by(OperationRow.created_at.desc(), OperationRow.id).limit(limit)
        for column, value in ((OperationRow.project_id, project_id), (OperationRow.status, status),
                              (OperationRow.kind, kind), (OperationRow.target, target),
                              (OperationRow.owner, owner)):
            if value is not None:
                query = query.where(column == value)
        with self._sessions() as session:
            return [_operation(r) for r in session.scalars(query)]

    def wait(self, op_id: str, timeout: float, project_id: str | None = None) -> Operation:
        """Block until the operation has finished or its progress moved on (or ``timeout``)."""
        first = self.get(op_id, project_id)
        return self._changes.wait_until(
            lambda: self.get(op_id),
            lambda op: op.done or (op.progress, op.message) != (first.progress, first.message),
            timeout)


def _operation(row: OperationRow) -> Operation:
    return Operation(id=row.id, kind=row.kind, target=row.target, project=row.project_id,
                     actor=row.actor, status=row.status, progress=row.progress, message=row.message,
                     error=row.error, result=row.result, created_at=row.created_at or utcnow(),
                     updated_at=row.updated_at or utcnow())
