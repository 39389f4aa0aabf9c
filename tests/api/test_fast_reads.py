"""The fast routes of GET /vms/{name} and GET /vms (api/fast_reads.py), through a real server on
both backends: the same answers as the FastAPI routes, and the same refusals, at once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import Server
from virtpool.sdk import Client


@dataclass
class World:
    url: str  # .../api/v1
    admin: str  # the admin token
    a: str  # a project, with the VM ``a_vm``
    a_vm: str
    b: str  # another project, with the VM ``b_vm``
    b_vm: str


def fresh(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def world(api_server: Server) -> World:
    admin = api_server.api()
    a, b, a_vm, b_vm = fresh("fa"), fresh("fb"), fresh("fvm"), fresh("fvm")
    for project, vm in ((a, a_vm), (b, b_vm)):
        admin.create_project(project)
        Client(admin.url, admin.token, project=project).create_vm(vm, memory_mib=64, disk_mib=16)
    return World(f"{admin.url}/api/v1", admin.token, a, a_vm, b, b_vm)


def get(world: World, token: str, path: str) -> httpx.Response:
    return httpx.get(world.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def token(world: World, role: str, project: str | None) -> tuple[str, str]:
    name = fresh("ftok")
    body = {"name": name, "role": role, **({"project": project} if project else {})}
    response = httpx.post(f"{world.url}/tokens", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {world.admin}"})
    assert response.status_code == 201, response.text
    return name, response.json()["token"]


def test_a_vm_and_a_page_are_the_bytes_the_fastapi_routes_answer(world: World) -> None:
    # wait_for, and all_projects=false, are left to the FastAPI routes (same VM, same page).
    fast = get(world, world.admin, f"/vms/{world.a_vm}?project={world.a}")
    slow = get(world, world.admin, f"/vms/{world.a_vm}?project={world.a}&wait_for=stopped&timeout=5")
    assert fast.status_code == slow.status_code == 200, (fast.text, slow.text)
    assert fast.content == slow.content
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
    assert fast.json()["name"] == world.a_vm

    fast = get(world, world.admin, f"/vms?project={world.a}&limit=10")
    slow = get(world, world.admin, f"/vms?project={world.a}&limit=10&all_projects=false")
    assert fast.status_code == slow.status_code == 200, (fast.text, slow.text)
    assert fast.content == slow.content
    assert [vm["name"] for vm in fast.json()] == [world.a_vm]
    assert fast.headers["x-total-count"] == slow.headers["x-total-count"] == "1"


def test_a_revoked_token_is_refused_by_the_fast_routes_at_once(world: World) -> None:
    name, secret = token(world, "viewer", world.a)
    for path in (f"/vms/{world.a_vm}", "/vms?limit=5"):  # its check is remembered now
        assert get(world, secret, path).status_code == 200
    revoked = httpx.delete(f"{world.url}/tokens/{name}", timeout=60,
                           headers={"Authorization": f"Bearer {world.admin}"})
    assert revoked.status_code == 200, revoked.text
    for path in (f"/vms/{world.a_vm}", "/vms?limit=5", f"/vms?limit=5&after={world.a_vm}:0"):
        refused = get(world, secret, path)
        assert refused.status_code == 401, (path, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "revoked" in refused.json()["detail"]


@pytest.mark.parametrize("header", [None, "Bearer vp_not-a-token", "Basic abc"])
def test_the_fast_routes_need_a_valid_token(world: World, header: str | None) -> None:
    for path in (f"/vms/{world.a_vm}?project={world.a}", "/vms"):
        headers = {"Authorization": header} if header else {}
        refused = httpx.get(world.url + path, headers=headers, timeout=60)
        assert refused.status_code == 401, refused.text
        assert refused.json()["title"] == "unauthorized"


def test_another_projects_vm_is_not_found_on_the_fast_routes(world: World) -> None:
    _, viewer = token(world, "viewer", world.a)
    assert get(world, viewer, f"/vms/{world.a_vm}").status_code == 200
    for path in (f"/vms/{world.b_vm}", f"/vms/{world.b_vm}?project={world.b}"):
        missing = get(world, viewer, path)
        assert missing.status_code == 404, (path, missing.text)
        assert missing.headers["content-type"] == "application/problem+json"
    page = get(world, viewer, f"/vms?project={world.b}")
    assert page.status_code == 404, page.text
    own = get(world, viewer, "/vms?limit=1000")
    assert [vm["name"] for vm in own.json()] == [world.a_vm]
    # A pool admin reads it in its project, and not in another.
    assert get(world, world.admin, f"/vms/{world.b_vm}?project={world.b}").status_code == 200
    assert get(world, world.admin, f"/vms/{world.b_vm}?project={world.a}").status_code == 404


def test_a_metrics_token_reads_no_vm_on_the_fast_routes(world: World) -> None:
    _, metrics = token(world, "metrics", None)
    for path in (f"/vms/{world.a_vm}?project={world.a}", f"/vms?project={world.a}"):
        refused = get(world, metrics, path)
        assert refused.status_code == 403, refused.text


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=ten", "offset=-1",
                                   "after=Nope:1", "project=" + "p" * 64])
def test_a_bad_page_request_is_refused_as_before(world: World, query: str) -> None:
    refused = get(world, world.admin, f"/vms?{query}")
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
