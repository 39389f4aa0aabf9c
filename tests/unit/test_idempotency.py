"""Idempotency keys against a real SQLite database (the VM side is a recorded stand-in)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.idempotency import IdempotentCreates, Made
from virtpool.control.store import db
from virtpool.control.store.tables import IdempotencyKeyRow, ProjectRow, utcnow
from virtpool.model.errors import Conflict, InvalidRequest, NotFound
from virtpool.model.vm import VMInfo



@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.open_database(db.sqlite_url(tmp_path / "state.db"))
    yield db.session_factory(engine)
    engine.dispose()


def vm(vm_id: str) -> VMInfo:
    return VMInfo.model_construct(id=vm_id, name="web", project="default")


class Creates:
    """Counts the creates that really ran."""

    def __init__(self) -> None:
        self.made: dict[str, VMInfo] = {}

    def __call__(self) -> Made:
        made = vm(f"vm{len(self.made)}")
        self.made[made.id] = made
        return Made(made)

    def get(self, vm_id: str) -> VMInfo:
        if vm_id not in self.made:
            raise NotFound(vm_id)
        return self.made[vm_id]


def keys(sessions: sessionmaker[Session]) -> list[tuple[str, str | None]]:
    with sessions() as session:
        return [(r.key, r.vm_id) for r in session.scalars(select(IdempotencyKeyRow))]


def service(sessions: sessionmaker[Session], creates: Creates) -> IdempotentCreates:
    return IdempotentCreates(sessions, creates.get, lambda op_id: pytest.fail("no operation"),
                             lambda vm_id: pytest.fail("no follow"))


def test_a_key_creates_once_and_a_retry_gets_the_same_vm(sessions: sessionmaker[Session]) -> None:
    creates = Creates()
    keyed = service(sessions, creates)
    first = keyed.run("k1", "default", {"name": "web"}, "web", False, creates)
    again = keyed.run("k1", "default", {"name": "web"}, "web", False, creates)
    assert first.vm.id == again.vm.id and len(creates.made) == 1
    with pytest.raises(InvalidRequest, match="different request"):
        keyed.run("k1", "default", {"name": "web", "cpus": 2}, "web", False, creates)
    # Another project's key of the same name is another key.
    with sessions.begin() as session:
        session.add(ProjectRow(id="team-a", name="team-a"))
    assert keyed.run("k1", "team-a", {"name": "web"}, "web", False, creates).vm.id != first.vm.id
    del creates.made[first.vm.id]
    with pytest.raises(Conflict, match="deleted since"):
        keyed.run("k1", "default", {"name": "web"}, "web", False, creates)


def test_a_refused_create_gives_its_key_back(sessions: sessionmaker[Session]) -> None:
    creates = Creates()
    keyed = service(sessions, creates)

    def refused() -> Made:
        raise Conflict("a VM named 'web' exists")

    with pytest.raises(Conflict):
        keyed.run("k2", "default", {"name": "web"}, "web", False, refused)
    assert keys(sessions) == []
    assert keyed.run("k2", "default", {"name": "web"}, "web", False, creates).vm.id == "vm0"


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "tab\there", "é"])
def test_a_key_must_be_printable_ascii(sessions: sessionmaker[Session], key: str) -> None:
    creates = Creates()
    with pytest.raises(InvalidRequest, match="Idempotency-Key"):
        service(sessions, creates).run(key, "default", {"name": "web"}, "web", False, creates)
    assert keys(sessions) == [] and creates.made == {}


def test_an_expired_key_is_forgotten(sessions: sessionmaker[Session]) -> None:
    creates = Creates()
    keyed = service(sessions, creates)
    keyed.run("k3", "default", {"name": "web"}, "web", False, creates)
    with sessions.begin() as session:
        session.execute(update(IdempotencyKeyRow).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert keyed.run("k3", "default", {"name": "web"}, "web", False, creates).vm.id == "vm1"
    assert keys(sessions) == [("k3", "vm1")]


def test_a_second_request_while_the_first_runs_is_a_conflict(sessions: sessionmaker[Session]) -> None:
    creates = Creates()
    keyed = service(sessions, creates)

    def crash() -> Made:
        with pytest.raises(Conflict, match="still running"):
            keyed.run("k4", "default", {"name": "web"}, "web", False, creates)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        keyed.run("k4", "default", {"name": "web"}, "web", False, crash)
    assert keys(sessions) == []  # even a BaseException gives the key back
