"""The fault: `kill -9` of the server while creates are in flight, then the clients retry with
the keys they sent. Exactly one VM per key, running; no second VM, no leftover row, disk or
QEMU; a key sent with another body is refused."""

from __future__ import annotations

import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import virtpool
from tests.conftest import Server, make_server, qemu_pids, wait_for

KEYS = [f"cut-off-{i}" for i in range(5)]


@pytest.fixture(scope="module")
def crashing(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    # Five guests booting at once under TCG on a shared machine: a generous boot deadline.
    srv = make_server(tmp_path_factory, image_cache, "crash", boot_timeout=300.0)
    yield srv
    srv.cleanup()
    assert qemu_pids(srv.data_dir) == []


def rows(server: Server, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{server.data_dir / 'state.db'}?mode=ro", uri=True) as db:
        return db.execute(query).fetchall()


def body(name: str) -> dict[str, object]:
    return {"name": name, "memory_mib": 128, "disk_mib": 256, "start": True}


def test_creates_cut_off_by_a_crash_make_one_vm_per_key_when_retried(crashing: Server) -> None:
    api = crashing.api()
    url, token = api.url, api.token
    first: dict[str, str] = {}  # key -> the operation id its first request answered with
    answered = threading.Event()

    def create(key: str) -> None:
        try:
            answer = httpx.post(f"{url}/api/v1/vms", json=body(key), timeout=60,
                                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key})
        except httpx.HTTPError:
            return  # cut off: the client saw only a broken connection
        if answer.status_code == 202:
            first[key] = answer.json()["id"]
            answered.set()

    threads = [threading.Thread(target=create, args=(key,)) for key in KEYS]
    for thread in threads:
        thread.start()
    answered.wait(60)
    crashing.stop(signal.SIGKILL)  # the first answer is out; the others are in flight
    for thread in threads:
        thread.join()
    crashing.start()
    api = crashing.api()

    # Every client retries with its own key, as the SDK does.
    ops = {key: api.create_vm(key, memory_mib=128, disk_mib=256, start=True, idempotency_key=key)
           for key in KEYS}
    for key, op_id in first.items():
        answered = api.operation(op_id)
        if answered.status == "failed":  # its VM had not run yet: removed at the restart, it says so
            assert "was removed and nothing of it is left" in (answered.error or ""), answered
            assert ops[key].id != op_id  # and the retry with its key created the VM afresh
        else:  # its QEMU ran: the VM boots on, followed by the operation first answered
            assert ops[key].id == op_id, "a retry of an answered create must answer the same operation"
    again = {key: api.create_vm(key, memory_mib=128, disk_mib=256, start=True, idempotency_key=key)
             for key in KEYS}
    assert {k: op.id for k, op in again.items()} == {k: op.id for k, op in ops.items()}
    with pytest.raises(virtpool.InvalidRequest) as refused:
        api.create_vm("other-name", memory_mib=128, disk_mib=256, start=True, idempotency_key=KEYS[0])
    assert "different request" in refused.value.detail

    for key in KEYS:
        vm = api.wait_vm(key, timeout=600)
        assert vm.state == "running", (key, vm.error, api.operation(ops[key].id))

    # Count everything: one VM, one row, one key, one disk, one QEMU per key; nothing else.
    vms = api.vms()
    assert sorted(vm.name for vm in vms) == sorted(KEYS)
    ids = {vm.id for vm in vms}
    assert {r[0] for r in rows(crashing, "SELECT id FROM vms")} == ids
    assert sorted(rows(crashing, "SELECT key, vm_id FROM idempotency_keys")) == \
        sorted((vm.name, vm.id) for vm in vms)
    assert {p.name for p in (crashing.data_dir / "vms").iterdir()} == ids
    assert all((crashing.data_dir / "vms" / i / "disk.qcow2").exists() for i in ids)
    assert wait_for(lambda: len(qemu_pids(crashing.data_dir)) == len(KEYS), timeout=30)
    assert rows(crashing, "SELECT count(*) FROM operations WHERE status IN ('pending', 'running')") == [(0,)]
    usage = api.project_info("default").usage
    assert (usage.vms, usage.memory_mib, usage.disk_mib) == (len(KEYS), 128 * len(KEYS), 256 * len(KEYS))

    # A create the crash removed before it ran says so in its first operation.
    removed = [op for op in api.operations(status="failed", kind="vm.create")
               if "was removed" in (op.error or "")]
    for op in removed:
        assert "nothing of it is left" in (op.error or "")

    for key in KEYS:
        api.delete_vm(key, force=True)
    assert api.vms() == [] and rows(crashing, "SELECT count(*) FROM vms") == [(0,)]
    assert list((crashing.data_dir / "vms").iterdir()) == []
    assert wait_for(lambda: qemu_pids(crashing.data_dir) == [], timeout=30)
    # The keys outlive their VMs (24 h): a late retry is told the VM was deleted, not given a new one.
    with pytest.raises(virtpool.Conflict) as late:
        api.create_vm(KEYS[0], memory_mib=128, disk_mib=256, start=True, idempotency_key=KEYS[0])
    assert "was deleted since" in late.value.detail
    assert api.vms() == []
