"""Project names and quotas at the edges of what the database holds (SQLite and PostgreSQL): the
longest allowed is stored and read back, one more is a clear 422 that changes nothing."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import Server
from virtpool.model.project import MAX_COUNT_QUOTA, MAX_PROJECT_NAME, MAX_QUOTA
from virtpool.sdk import Client

PROBLEM = "application/problem+json"


def name_of(length: int) -> str:
    return ("p" + uuid.uuid4().hex * 2)[:length]


def call(server: Server, method: str, path: str, body: object) -> httpx.Response:
    api = server.api()
    return httpx.request(method, f"{api.url}/api/v1{path}", json=body, timeout=60,
                         headers={"Authorization": f"Bearer {api.token}"})


def refused(response: httpx.Response, mentions: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert mentions in response.text


def test_the_longest_project_name_works_and_one_more_is_refused(api_server: Server) -> None:
    longest = name_of(MAX_PROJECT_NAME)
    created = call(api_server, "POST", "/projects", {"name": longest})
    assert created.status_code == 201, created.text
    # Its id lands in the other tables' project_id columns too: a VM, a token, the audit log.
    api = api_server.api()
    api.create_token(f"{longest}-v", "viewer", project=longest)
    vm = call(api_server, "POST", f"/vms?project={longest}",
              {"name": "edge", "memory_mib": 64, "disk_mib": 16})
    assert vm.status_code == 201, vm.text
    Client(api.url, api.token, project=longest).delete_vm("edge")
    assert {e.action for e in api.audit(project=longest, limit=1000)} >= {
        "POST /projects", "POST /tokens", "POST /vms", "DELETE /vms/{name}"}
    assert api.events(project=longest)

    too_long = name_of(MAX_PROJECT_NAME + 1)
    refused(call(api_server, "POST", "/projects", {"name": too_long}),
            f"a project name is at most {MAX_PROJECT_NAME} characters")
    assert too_long not in [p.name for p in api.projects()]


@pytest.mark.parametrize(("field", "most"), [("cpus", MAX_COUNT_QUOTA), ("vms", MAX_COUNT_QUOTA),
                                             ("memory_mib", MAX_QUOTA), ("disk_mib", MAX_QUOTA)])
def test_each_quota_holds_its_largest_value_and_refuses_more(api_server: Server, field: str,
                                                              most: int) -> None:
    project = name_of(12)
    created = call(api_server, "POST", "/projects", {"name": project, "quota": {field: most}})
    assert created.status_code == 201, created.text
    assert created.json()["quota"][field] == most
    refused(call(api_server, "POST", "/projects", {"name": name_of(12), "quota": {field: most + 1}}),
            field)

    changed = call(api_server, "PUT", f"/projects/{project}/quota", {field: most - 1})
    assert changed.status_code == 200, changed.text
    refused(call(api_server, "PUT", f"/projects/{project}/quota", {field: most + 1}), field)
    assert api_server.api().project_info(project).quota.model_dump()[field] == most - 1
