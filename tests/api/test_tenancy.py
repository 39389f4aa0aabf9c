"""Projects, tokens and the audit log as a user meets them: through the CLI and the SDK
against a real `virtpool up` server."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import Server, make_server
from virtpool.sdk import APIError, Client


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    srv = make_server(tmp_path_factory, image_cache, "tenancy")
    for project in ("red", "blue"):
        srv.api().create_project(project)
    yield srv
    srv.cleanup()


def token(server: Server, name: str, role: str, project: str) -> str:
    return server.api().create_token(name, role, project=project).token


def cli_json(server: Server, *args: str, token: str | None = None) -> object:
    result = server.cli(*args, "--json", token=token)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_token_create_shows_the_secret_once_and_never_in_list_or_audit(server: Server) -> None:
    created = cli_json(server, "token", "create", "--project", "red", "--role", "member",
                       "--name", "red-ci", "--expires", "30d")
    assert isinstance(created, dict)
    secret = created["token"]
    assert secret.startswith("vp_") and created["project"] == "red" and created["role"] == "member"
    assert created["expires_at"] is not None
    # It works, and acts in its own project without --project.
    vm = cli_json(server, "vm", "create", "ci1", "--memory", "64M", "--disk", "16M", token=secret)
    assert isinstance(vm, dict) and vm["project"] == "red"

    listing = server.cli("token", "list", "--json").stdout + server.cli("token", "list").stdout
    audit = server.cli("audit", "list", "--json").stdout + server.cli("audit", "list").stdout
    for text in (listing, audit):
        assert secret not in text
        assert secret.removeprefix("vp_") not in text
        assert hashlib.sha256(secret.encode()).hexdigest() not in text
    assert "red-ci" in listing and "red-ci" in audit


def test_project_scoped_cli_sees_only_its_project(server: Server) -> None:
    red = token(server, "red-viewer", "viewer", "red")
    server.api().create_vm("shared-name", memory_mib=64, disk_mib=16)  # in 'default'
    Client(server.api().url, server.api().token, project="blue").create_vm("shared-name", memory_mib=64,
                                                                         disk_mib=16)
    assert cli_json(server, "vm", "list", token=red) == [
        v for v in cli_json(server, "--project", "red", "vm", "list") if isinstance(v, dict)]  # type: ignore[union-attr]
    names = {v["project"] for v in cli_json(server, "--project", "blue", "vm", "list")}  # type: ignore[index,union-attr]
    assert names == {"blue"}
    everywhere = {v["project"] for v in cli_json(server, "vm", "list", "--all-projects")}  # type: ignore[index,union-attr]
    assert {"default", "blue"} <= everywhere
    assert {v["project"] for v in cli_json(server, "vm", "list")} == {"default"}  # type: ignore[index,union-attr]
    refused = server.cli("--project", "blue", "vm", "list", token=red)
    assert refused.returncode == 1
    assert "no project named 'blue'" in refused.stderr
    refused = server.cli("vm", "create", "nope", token=red)
    assert refused.returncode == 1 and "viewer role in project 'red'" in refused.stderr


def test_another_projects_vm_answers_exactly_like_a_missing_one(server: Server) -> None:
    blue_vm = Client(server.api().url, server.api().token, project="blue").create_vm(
        "secret-vm", memory_mib=64, disk_mib=16)
    red = token(server, "red-admin", "admin", "red")
    with httpx.Client(base_url=server.api().url + "/api/v1", headers={"Authorization": f"Bearer {red}"}) as http:
        for method, path in (("GET", "/vms/{}"), ("DELETE", "/vms/{}"), ("POST", "/vms/{}/start"),
                             ("GET", "/vms/{}/logs"), ("POST", "/vms/{}/resize")):
            body = {"cpu_weight": 5} if path.endswith("resize") else None
            other = http.request(method, path.format(blue_vm.id), json=body)
            missing = http.request(method, path.format("0" * 32), json=body)
            assert other.status_code == missing.status_code == 404
            assert other.json() == {**missing.json(), "detail": missing.json()["detail"].replace("0" * 32, blue_vm.id)}
    assert server.api().project_info("blue").usage.vms >= 1  # still there


def test_console_of_another_project_is_not_found(server: Server) -> None:
    blue_vm = Client(server.api().url, server.api().token, project="blue").create_vm(
        "console-vm", memory_mib=64, disk_mib=16)
    ws = server.api().url.replace("http://", "ws://") + "/api/v1/vms/{}/console"
    codes = {}
    for who, role in (("red-op", "member"), ("blue-look", "viewer"), ("blue-op", "member")):
        secret = token(server, who, role, who.split("-")[0])
        with pytest.raises(InvalidStatus) as refused:
            connect(ws.format(blue_vm.id), additional_headers={"Authorization": f"Bearer {secret}"})
        codes[who] = refused.value.response.status_code
    # other project: not found; own project as viewer: forbidden; own as member: the VM is stopped.
    assert codes == {"red-op": 404, "blue-look": 403, "blue-op": 409}


def test_project_delete_refused_with_vms_then_takes_its_tokens(server: Server) -> None:
    admin = server.api()
    admin.create_project("temp")
    secret = token(server, "temp-admin", "admin", "temp")
    Client(admin.url, secret).create_vm("t1", memory_mib=64, disk_mib=16)
    refused = server.cli("project", "delete", "temp")
    assert refused.returncode == 1
    assert "project 'temp' still has 1 VM" in refused.stderr
    assert "virtpool --project temp vm list" in refused.stderr
    Client(admin.url, secret).delete_vm("t1")
    assert server.cli("project", "delete", "temp").returncode == 0
    with pytest.raises(APIError) as gone:
        Client(admin.url, secret).vms()
    assert gone.value.status == 401
    assert "temp-admin" not in {t.name for t in admin.tokens()}
    default = server.cli("project", "delete", "default")
    assert default.returncode == 1 and "cannot be deleted" in default.stderr


def test_project_cli_shows_usage_next_to_quota_and_accepts_unlimited(server: Server) -> None:
    server.cli("project", "create", "sized", "--vms", "3", "--memory", "1G")
    Client(server.api().url, server.api().token, project="sized").create_vm("z1", memory_mib=256, disk_mib=16)
    shown = server.cli("project", "show", "sized").stdout
    assert "1 of 3" in shown and "256M of 1G" in shown and "16M of unlimited" in shown
    lowered = server.cli("project", "quota", "set", "sized", "--vms", "0", "--memory", "unlimited")
    assert lowered.returncode == 0
    assert "vms quota (0) is below what is in use (1)" in lowered.stderr
    info = cli_json(server, "project", "show", "sized")
    assert info["quota"] == {"cpus": None, "memory_mib": None, "disk_mib": None, "vms": 0}  # type: ignore[index]
    bad = server.cli("project", "quota", "set", "sized", "--vms", "lots")
    assert bad.returncode == 1 and "unlimited" in bad.stderr


def test_revoked_and_expired_tokens_are_refused_at_once(server: Server) -> None:
    secret = token(server, "short-lived", "member", "red")
    assert server.cli("vm", "list", token=secret).returncode == 0
    assert server.cli("token", "revoke", "short-lived").returncode == 0
    refused = server.cli("vm", "list", token=secret)
    assert refused.returncode == 1 and "token 'short-lived' was revoked" in refused.stderr


def test_project_admin_manages_only_its_own_tokens(server: Server) -> None:
    red_admin = Client(server.api().url, token(server, "red-boss", "admin", "red"))
    made = red_admin.create_token("red-helper", "viewer")
    assert made.project == "red"
    assert {t.project for t in red_admin.tokens()} == {"red"}
    for attempt in (lambda: red_admin.create_token("sneaky", "admin", project="blue"),
                    lambda: red_admin.revoke_token("bootstrap-admin"),
                    lambda: red_admin.tokens(project="blue")):
        with pytest.raises(APIError) as refused:
            attempt()
        assert refused.value.status == 404
    with pytest.raises(APIError) as refused:
        red_admin.create_token("root2", "admin", pool_wide=True)
    assert refused.value.status == 403
    assert red_admin.revoke_token("red-helper").revoked_at is not None


def test_audit_list_by_project_and_since(server: Server) -> None:
    red_viewer = token(server, "red-auditor", "viewer", "red")
    Client(server.api().url, server.api().token, project="blue").create_vm("audited", memory_mib=64,
                                                                         disk_mib=16)
    everything = cli_json(server, "audit", "list", "--since", "1h")
    assert isinstance(everything, list)
    assert {"red", "blue"} <= {e["project"] for e in everything}
    blue_only = cli_json(server, "audit", "list", "--project", "blue", "--since", "1h")
    assert {e["project"] for e in blue_only} == {"blue"}  # type: ignore[union-attr]
    assert any(e["target"] == "audited" and e["action"] == "POST /vms" and e["outcome"] == "201"
               for e in blue_only)  # type: ignore[union-attr]
    assert cli_json(server, "audit", "list", "--since", "2099-01-01T00:00") == []
    own = cli_json(server, "audit", "list", token=red_viewer)
    assert own and {e["project"] for e in own} == {"red"}  # type: ignore[union-attr]
    refused = server.cli("audit", "list", "--project", "blue", token=red_viewer)
    assert refused.returncode == 1 and "no project named 'blue'" in refused.stderr


def test_a_taken_host_port_does_not_name_another_projects_vm(server: Server) -> None:
    admin = server.api()
    Client(admin.url, admin.token, project="blue").create_vm("porter", memory_mib=64, disk_mib=16,
                                                             ports=["18473:80"])
    red = Client(admin.url, token(server, "red-porter", "member", "red"))
    with pytest.raises(APIError) as refused:
        red.create_vm("mine", memory_mib=64, disk_mib=16, ports=["18473:80"])
    assert refused.value.status == 409
    assert refused.value.detail == "host port 18473 is already forwarded to a VM of another project"
    with pytest.raises(APIError) as own:
        Client(admin.url, admin.token, project="blue").create_vm("mine", memory_mib=64, disk_mib=16,
                                                                 ports=["18473:80"])
    assert own.value.detail == "host port 18473 is already forwarded to VM 'porter'"


def test_project_and_token_names_are_checked(server: Server) -> None:
    for bad in ("Team/A", "a b", "9x", "x;rm", "x" * 64):
        refused = server.cli("project", "create", bad)
        assert refused.returncode == 1, bad
        assert "project name" in refused.stderr or "name:" in refused.stderr, refused.stderr
    refused = server.cli("token", "create", "--project", "red", "--role", "viewer", "--name", "../etc")
    assert refused.returncode == 1 and "not a valid token name" in refused.stderr
    refused = server.cli("token", "create", "--role", "member", "--pool-wide")
    assert refused.returncode == 1 and "only admin and metrics tokens can be pool-wide" in refused.stderr
    # A pool-wide token names no project (tests/security/test_refused_at_create.py has the rest).
    refused = server.cli("token", "create", "--project", "red", "--role", "member", "--pool-wide")
    assert refused.returncode == 1 and "pool-wide token acts in no project" in refused.stderr
    refused = server.cli("token", "create", "--project", "red", "--role", "viewer", "--expires", "soon")
    assert refused.returncode == 1 and "30d" in refused.stderr


def test_events_and_host_top_show_a_project_token_its_own_vms_only(server: Server) -> None:
    admin = server.api()
    Client(admin.url, admin.token, project="red").create_vm("red-ev", memory_mib=64, disk_mib=16)
    Client(admin.url, admin.token, project="blue").create_vm("blue-ev", memory_mib=64, disk_mib=16)
    red = Client(admin.url, token(server, "red-watcher", "viewer", "red"))
    red_events = red.events(limit=1000)
    assert any(e.vm == "red-ev" for e in red_events)
    assert not any(e.vm == "blue-ev" for e in red_events)
    assert {e.vm for e in admin.events(limit=1000)} >= {"red-ev", "blue-ev"}
    top = {s.name for s in red.host_top()}
    assert "red-ev" in top and "blue-ev" not in top
    assert {"red-ev", "blue-ev"} <= {s.name for s in admin.host_top()}
