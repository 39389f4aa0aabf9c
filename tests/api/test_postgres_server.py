"""`virtpool up --db postgresql://…` keeps its state in PostgreSQL; `virtpool server` serves the
same records as a control plane without an agent, and refuses host actions with a clear 503."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from tests.conftest import VIRTPOOL, Server, make_server, link_image
from tests.postgres import create_database, postgres_server, restart_postgres
from virtpool.control.store import db
from virtpool.control.store.tables import VMRow
from virtpool.sdk import Conflict, NotFound, ServerError


def test_up_and_server_share_one_postgresql_pool(postgres: str, image_cache: Path,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    # The URL as PostgreSQL's own tools write it: virtpool picks the driver.
    url = create_database(postgres, "shared").replace("postgresql+psycopg://", "postgresql://")
    up = make_server(tmp_path_factory, image_cache, "pg-up", db_url=url)
    try:
        up.api().create_vm("kept")
        op = up.api().build_image("default")
        up.api().wait_operation(op, timeout=120)
    finally:
        up.stop()

    # The pool's admin token and CA passphrase were made by the first server; the operator hands
    # them to the second.
    data_dir = tmp_path_factory.mktemp("pg-server")
    shutil.copy2(up.data_dir / "admin.token", data_dir / "admin.token")
    (data_dir / "pki").mkdir(mode=0o700)
    shutil.copy2(up.data_dir / "pki" / "ca.passphrase", data_dir / "pki" / "ca.passphrase")
    # Images live in each control plane's own store: the operator gives this one the image too.
    link_image(image_cache, data_dir)
    control = Server(data_dir, command="server", extra_args=("--db", url)).start()
    try:
        api = control.api()
        assert [v.name for v in api.vms()] == ["kept"]  # the records live in PostgreSQL
        assert api.operation(op.id).status == "succeeded"
        assert any(e.vm == "kept" for e in api.events())
        with pytest.raises(ServerError) as refused:
            api.start_vm("kept")
        assert refused.value.status == 503
        # The VM's host (this machine, where `up` ran) has no agent now that only a server runs.
        assert f"host '{socket.gethostname()}' has no agent attached" in refused.value.detail
        assert refused.value.title == "no agent attached"
        # While the host's lease (15 s after `up` stopped) runs, a create is a record (claim
        # included) that starts once its host has an agent; after it, the host is not up and the
        # create is refused, leaving no record. Which one a loaded machine sees is its timing.
        try:
            api.create_vm("another")
        except Conflict as lapsed:
            assert "1 host is not up" in lapsed.detail, lapsed
            assert [v.name for v in api.vms()] == ["kept"]
        else:
            with pytest.raises(ServerError) as again:
                api.start_vm("another")
            assert again.value.status == 503 and again.value.title == "no agent attached"
            assert sorted(v.name for v in api.vms()) == ["another", "kept"]
        assert "control plane only" in control.log.read_text()
    finally:
        control.stop()


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [VIRTPOOL, "server", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
         "--db", "postgresql://nobody@127.0.0.1:1/none"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "cannot open the database" in result.stderr and "Traceback" not in result.stderr
    bad = subprocess.run(
        [VIRTPOOL, "server", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0", "--db", "nonsense"],
        capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and "database URL" in bad.stderr


def test_reads_after_postgresql_restarts_answer_without_an_error(tmp_path: Path) -> None:
    # GET one VM and a page of VMs read on pooled connections without a pre-ping
    # (store/read_only.py): after the database restarts, every one of those connections is dead,
    # and the user still gets the VM, not a 503.
    with postgres_server() as url:
        control = Server(tmp_path / "d", command="server", extra_args=("--db", url))
        (tmp_path / "d").mkdir(mode=0o700)
        engine = db.open_database(url)
        with Session(engine) as session, session.begin():
            session.add_all(
                VMRow(id=f"{i:032x}", name=f"vm-{i}", image="default", cpus=1, memory_mib=256,
                      disk_mib=1024, kernel_args="", accel="auto", max_memory_mib=256,
                      cpu_weight=100, slot=i, state="stopped", host="elsewhere")
                for i in range(3))
        engine.dispose()
        control.start()
        try:
            api = control.api()
            for _ in range(3):  # pooled read connections, all from before the restart
                assert api.vm("vm-1").name == "vm-1"
                assert [v.name for v in api.vms()] == ["vm-0", "vm-1", "vm-2"]
            restart_postgres(url)
            assert api.vm("vm-2").state == "stopped"
            assert [v.name for v in api.vms()] == ["vm-0", "vm-1", "vm-2"]
            with pytest.raises(NotFound):  # a real miss is still a miss
                api.vm("vm-9")
        finally:
            control.stop()
