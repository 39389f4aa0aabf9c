"""Long actions return an operation that can be followed to its end, on SQLite and PostgreSQL."""

from __future__ import annotations

import signal

import pytest

import virtpool
from tests.conftest import Server
from virtpool.sdk import NotFound, OperationFailed


def test_image_build_is_an_operation_with_a_location(api_server: Server) -> None:
    http = api_server.api()._http
    response = http.post("/images/default/build")
    assert response.status_code == 202
    op = response.json()
    assert response.headers["location"] == f"/api/v1/operations/{op['id']}"
    assert op["kind"] == "image.build" and op["target"] == "default"
    assert op["actor"] == "bootstrap-admin"

    done = api_server.api().wait_operation(op["id"], timeout=120)
    assert done.status == "succeeded" and done.progress == 100
    assert done.result == {"image": "default", "built": False}  # the linked image is current
    assert http.get(response.headers["location"].removeprefix("/api/v1")).json()["status"] == "succeeded"
    assert any(o.id == op["id"] for o in api_server.api().operations(kind="image.build"))


def test_project_tokens_see_their_own_project_operations_only(api_server: Server) -> None:
    api = api_server.api()
    build = api.wait_operation(api.build_image("default"), timeout=120)  # belongs to no project
    api.create_project("opsproj")
    secret = api.create_token("opsproj-member", "member", project="opsproj").token
    with virtpool.Client(api.url, secret) as member:
        with pytest.raises(NotFound):
            member.operation(build.id)
        assert build.id not in [o.id for o in member.operations(limit=1000)]
        with pytest.raises(NotFound):
            member.operations(project="default")
    assert api.operation(build.id).status == "succeeded"


def test_create_and_boot_then_stop_through_operations(api_server: Server) -> None:
    api = api_server.api()
    op = api.create_vm("booted", start=True)
    assert op.kind == "vm.create" and op.target == "booted" and op.project == "default"
    assert op.status == "running"

    seen: list[int] = []
    done = api.wait_operation(op, timeout=180, on_progress=lambda o: seen.append(o.progress))
    assert done.status == "succeeded" and done.progress == 100
    assert seen == sorted(seen)  # progress never goes back
    assert api.vm("booted").state == "running"

    stopped = api.wait_operation(api.stop_vm("booted"), timeout=120)
    assert stopped.kind == "vm.stop" and stopped.status == "succeeded"
    assert api.vm("booted").state == "stopped"
    assert [o.kind for o in api.operations(target="booted")] == ["vm.stop", "vm.create"]
    api.delete_vm("booted")


def test_a_boot_that_fails_fails_its_operation_with_the_reason(api_server: Server) -> None:
    api = api_server.api()
    api.create_vm("panics", kernel_args="rdinit=/nonexistent")
    op = api.start_vm("panics")
    with pytest.raises(OperationFailed) as failed:
        api.wait_operation(op, timeout=180)
    assert failed.value.operation.status == "failed"
    error = failed.value.operation.error or ""
    assert "exited with code" in error and "while the guest booted" in error, error
    assert api.operation(op.id).error == failed.value.operation.error
    api.delete_vm("panics")


def test_refused_action_leaves_no_operation(api_server: Server) -> None:
    api = api_server.api()
    api.create_vm("idle")
    before = api.operations(limit=1000)
    response = api._http.post("/vms/idle/stop")
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert api.operations(limit=1000) == before
    api.delete_vm("idle")


def test_cli_follows_operations(api_server: Server) -> None:
    created = api_server.cli("vm", "create", "clivm", "--start", "--wait", "--json")
    assert created.returncode == 0, created.stderr
    listed = api_server.cli("operation", "list", "--target", "clivm", "--json")
    assert listed.returncode == 0, listed.stderr
    import json

    [op] = json.loads(listed.stdout)
    assert op["status"] == "succeeded"
    shown = api_server.cli("operation", "show", op["id"])
    assert "succeeded" in shown.stdout and "vm.create" in shown.stdout
    assert api_server.cli("vm", "stop", "clivm").returncode == 0
    assert api_server.cli("operation", "show", "nosuchop").returncode == 1
    api_server.api().delete_vm("clivm")


def test_unknown_operation_is_404(api_server: Server) -> None:
    with pytest.raises(NotFound):
        api_server.api().operation("0" * 32, wait=1)


def test_operation_cut_off_by_a_restart_ends_clearly(api_server: Server) -> None:
    api = api_server.api()
    op = api.create_vm("cutoff", start=True)
    api_server.stop(signal.SIGKILL)  # dies while the guest boots: nobody can finish the operation
    api_server.start()
    api = api_server.api()
    if any(vm.name == "cutoff" for vm in api.vms()):
        # Its QEMU was spawned before the kill: it boots on, and its operation follows it to the end.
        assert api.wait_operation(op.id).status == "succeeded"
        assert api.vm("cutoff").state == "running"
        api.delete_vm("cutoff", force=True)
    else:  # killed before its QEMU ran: the VM is removed, and the operation says so
        after = api.operation(op.id)
        assert after.status == "failed"
        assert "first ran, so the VM was removed and nothing of it is left" in (after.error or "")
