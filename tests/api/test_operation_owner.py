"""Operations belong to the control-plane process that runs them: when one of several servers
sharing a PostgreSQL pool restarts, it fails the unfinished operations it owned (its previous
run can never finish them), and leaves the other servers' running operations alone."""

from __future__ import annotations

import shutil
import signal
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from tests.conftest import Server, make_server
from tests.postgres import create_database
from virtpool.control.operations import INSTANCE_FILE, INTERRUPTED
from virtpool.control.store import db
from virtpool.control.store.tables import OperationRow


def owner_of(server: Server) -> str:
    return (server.data_dir / INSTANCE_FILE).read_text().strip()


def test_a_restarted_server_fails_only_the_operations_it_owned(
        tmp_path_factory: pytest.TempPathFactory, postgres: str) -> None:
    url = create_database(postgres, "op_owner")
    a = make_server(tmp_path_factory, None, "owner-a", db_url=url, command="server")
    b_dir = tmp_path_factory.mktemp("owner-b")
    # The pool's admin token and CA are made once, by the first server: the second uses them.
    shutil.copy2(a.data_dir / "admin.token", b_dir / "admin.token")
    b = Server(b_dir, command="server", extra_args=(
        "--db", url, "--ca-passphrase-file", str(a.data_dir / "pki" / "ca.passphrase"))).start()
    engine = db.open_database(url)
    sessions = db.session_factory(engine)
    try:
        assert owner_of(a) != owner_of(b)
        ids = {who: uuid.uuid4().hex for who in ("a", "b", "legacy")}
        owners = {"a": owner_of(a), "b": owner_of(b), "legacy": None}
        with sessions.begin() as session:  # each server mid-way through an operation of its own
            for who, op_id in ids.items():
                session.add(OperationRow(id=op_id, kind="image.build", target=f"img-{who}", actor="admin",
                                         status="running", progress=40, owner=owners[who],
                                         created_at=datetime.now(UTC)))
        b.stop(signal.SIGKILL)  # b dies with its operation unfinished, and starts again
        b.start()
        shown = {op.id: op for op in b.api().operations(limit=200)}
        assert shown[ids["b"]].status == "failed" and shown[ids["b"]].error == INTERRUPTED
        assert shown[ids["legacy"]].status == "failed"  # from before owners: nobody carries it on
        assert shown[ids["a"]].status == "running" and shown[ids["a"]].progress == 40  # a's own
        assert owner_of(b) == owners["b"]  # the same owner across its restarts
        with sessions() as session:
            running = session.scalars(select(OperationRow.id).where(OperationRow.status == "running")).all()
        assert running == [ids["a"]]
    finally:
        a.stop()
        b.stop()
        engine.dispose()
