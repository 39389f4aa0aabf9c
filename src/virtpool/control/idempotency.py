"""Idempotent creates: a create sent again with the same ``Idempotency-Key`` answers with what
the first one made (the same VM, the same operation) instead of making a second VM.

A key belongs to one project and lives ``KEY_TTL`` (24 h). Its row is written *before* the
create (the key is claimed: a second request with it while the first runs is told to wait),
and completed with the VM and operation once the create returns. A create refused before it
made anything gives its key back, so the retry runs it again. A crash between the claim and
the completion leaves a claim without a VM id: :meth:`IdempotentCreates.settle` (run at start,
before serving) ties it to the VM the create made (the key names it) or drops it.

The request is remembered as a SHA-256 of its canonical JSON, never its body: the same key
with a different body is refused, and no secret a body may carry is kept.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.store.tables import IdempotencyKeyRow, VMRow, utcnow
from virtpool.model.errors import Conflict, InvalidRequest, NotFound
from virtpool.model.operation import Operation
from virtpool.model.vm import VMInfo

KEY_TTL = timedelta(hours=24)
# A claim older than this whose request never completed belongs to a process that died (a
# create answers in well under a second; only its boot, which is not waited for, takes long).
ABANDONED_AFTER = timedelta(minutes=2)
KEY_RULE = re.compile(r"^[\x21-\x7e]{1,255}$")
KEY_HINT = "send 1 to 255 printable ASCII characters without spaces, e.g. a UUID"


def request_hash(body: dict[str, Any]) -> str:
    """The SHA-256 of a request body in canonical JSON (keys sorted, no spaces)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Made:
    """What a create made: the VM, and the operation booting it when it was asked to start."""

    vm: VMInfo
    operation: Operation | None = None


class IdempotentCreates:
    """Runs creates under their idempotency keys."""

    def __init__(self, sessions: sessionmaker[Session], get_vm: Callable[[str], VMInfo],
                 get_operation: Callable[[str], Operation],
                 follow: Callable[[str], Operation]) -> None:
        """``follow(vm_id)`` begins an operation that follows a booting VM (for a create whose
        own operation a crash kept from being written)."""
        self._sessions = sessions
        self._get_vm = get_vm
        self._get_operation = get_operation
        self._follow = follow

    def run(self, key: str, project_id: str, body: dict[str, Any], vm_name: str, start: bool,
            create: Callable[[], Made]) -> Made:
        """``create()`` once per key: a first request runs it; a retry gets what it made."""
        if not KEY_RULE.match(key):
            raise InvalidRequest("the Idempotency-Key header is not a valid key", hint=KEY_HINT)
        digest = request_hash(body)
        if not self._claim(key, project_id, digest, vm_name, start):
            return self._replay(key, project_id, digest)
        try:
            made = create()
        except BaseException:
            self._release(key, project_id)  # nothing was made: the retry runs the create again
            raise
        with self._sessions.begin() as session:
            session.execute(update(IdempotencyKeyRow)
                            .where(IdempotencyKeyRow.project_id == project_id, IdempotencyKeyRow.key == key)
                            .values(vm_id=made.vm.id,
                                    operation_id=made.operation.id if made.operation else None))
        return made

    def _claim(self, key: str, project_id: str, digest: str, vm_name: str, start: bool) -> bool:
        """True when this request holds the key now; False when an earlier one did."""
        now = utcnow()
        try:
            with self._sessions.begin() as session:
                # Expired keys go first (any project's: the table stays as small as a day's creates),
                # and so does this key's claim when it was abandoned by a process that died.
                session.execute(delete(IdempotencyKeyRow).where(IdempotencyKeyRow.expires_at <= now))
                session.execute(delete(IdempotencyKeyRow).where(
                    IdempotencyKeyRow.project_id == project_id, IdempotencyKeyRow.key == key,
                    IdempotencyKeyRow.vm_id.is_(None), IdempotencyKeyRow.created_at <= now - ABANDONED_AFTER))
                session.add(IdempotencyKeyRow(project_id=project_id, key=key, request_hash=digest,
                                              vm_name=vm_name, start=start, created_at=now,
                                              expires_at=now + KEY_TTL))
            return True
        except IntegrityError:
            return False

    def _release(self, key: str, project_id: str) -> None:
        with self._sessions.begin() as session:
            session.execute(delete(IdempotencyKeyRow).where(
                IdempotencyKeyRow.project_id == project_id, IdempotencyKeyRow.key == key,
                IdempotencyKeyRow.vm_id.is_(None)))

    def _replay(self, key: str, project_id: str, digest: str) -> Made:
        with self._sessions() as session:
            row = session.get(IdempotencyKeyRow, (project_id, key))
        if row is None:  # the first request failed and gave the key back meanwhile
            raise Conflict(f"the request first sent with Idempotency-Key '{key}' failed just now",
                           hint="send it again")
        if row.request_hash != digest:
            raise InvalidRequest(
                f"Idempotency-Key '{key}' was first sent with a different request",
                hint="a key stands for one request: send a new key for a new request")
        if row.vm_id is None:
            raise Conflict(f"the request first sent with Idempotency-Key '{key}' is still running",
                           hint="try again in a moment: it answers with what that request made")
        try:
            vm = self._get_vm(row.vm_id)
        except NotFound as err:
            raise Conflict(f"VM '{row.vm_name}', which Idempotency-Key '{key}' created, was deleted since",
                           hint="send a new key to create it again") from err
        if row.operation_id is not None:
            return Made(vm, self._get_operation(row.operation_id))
        if not row.start:
            return Made(vm)
        operation = self._follow(vm.id)
        with self._sessions.begin() as session:
            session.execute(update(IdempotencyKeyRow)
                            .where(IdempotencyKeyRow.project_id == project_id, IdempotencyKeyRow.key == key,
                                   IdempotencyKeyRow.operation_id.is_(None))
                            .values(operation_id=operation.id))
        return Made(vm, operation)

    def settle(self) -> list[str]:
        """At start: tie each claim a crash left incomplete to the VM its create made, or drop
        it when the create made none (its retry then runs the create again). Returns the VMs so
        tied whose create asked to boot them: a crash cut those creates off before they answered."""
        asked_to_boot = []
        with self._sessions.begin() as session:
            for row in session.scalars(select(IdempotencyKeyRow).where(IdempotencyKeyRow.vm_id.is_(None))):
                vm_id = session.scalar(select(VMRow.id).where(
                    VMRow.project_id == row.project_id, VMRow.name == row.vm_name,
                    VMRow.created_at >= row.created_at - timedelta(seconds=1)))
                if vm_id is None:
                    session.delete(row)
                    continue
                row.vm_id = vm_id
                if row.start:
                    asked_to_boot.append(vm_id)
        return asked_to_boot

    def forget_vm(self, vm_id: str) -> None:
        """Drop the keys that made ``vm_id`` (a VM removed because it never ran): a retry with
        such a key creates the VM again instead of answering that it was deleted."""
        with self._sessions.begin() as session:
            session.execute(delete(IdempotencyKeyRow).where(IdempotencyKeyRow.vm_id == vm_id))

    def forget_operation(self, op_id: str) -> None:
        """Drop the keys whose create answered with ``op_id`` (a create-and-boot whose VM was
        removed before it ever ran): a retry with such a key creates the VM again."""
        with self._sessions.begin() as session:
            session.execute(delete(IdempotencyKeyRow).where(IdempotencyKeyRow.operation_id == op_id))
