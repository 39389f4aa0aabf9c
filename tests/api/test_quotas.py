"""Project quotas against a real server: they hold under 50 concurrent creates (on SQLite and
on PostgreSQL), name the quota and usage when they refuse, and count resizes and deletes."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, make_server
from tests.postgres import postgres_server
from virtpool.model.project import Usage
from virtpool.sdk import APIError, Client

CONCURRENT = 50
QUOTA = 10


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           image_cache: Path) -> Iterator[Server]:
    if request.param == "sqlite":
        srv = make_server(tmp_path_factory, image_cache, "quota-sqlite")
        yield srv
        srv.cleanup()
        return
    with postgres_server() as url:
        srv = make_server(tmp_path_factory, image_cache, "quota-pg", db_url=url)
        yield srv
        srv.cleanup()


def member_of(server: Server, project: str, **quota: int | None) -> Client:
    admin = server.api()
    admin.create_project(project, **quota)
    secret = admin.create_token(f"{project}-member", "member", project=project).token
    return Client(admin.url, secret)


def usage_of_rows(client: Client) -> Usage:
    vms = client.vms()
    return Usage(cpus=sum(v.cpus for v in vms), memory_mib=sum(v.max_memory_mib for v in vms),
                 disk_mib=sum(v.disk_mib for v in vms), vms=len(vms))


def test_fifty_concurrent_creates_against_a_quota_of_ten(server: Server) -> None:
    member = member_of(server, "race", vms=QUOTA)
    start = threading.Barrier(CONCURRENT)

    def create(n: int) -> httpx.Response:
        with httpx.Client(base_url=member.url + "/api/v1", timeout=120,
                          headers={"Authorization": f"Bearer {member.token}"}) as http:
            start.wait()
            return http.post("/vms", json={"name": f"racer{n}", "memory_mib": 64, "disk_mib": 16})

    with ThreadPoolExecutor(CONCURRENT) as pool:
        responses = list(pool.map(create, range(CONCURRENT)))

    assert Counter(r.status_code for r in responses) == {201: QUOTA, 409: CONCURRENT - QUOTA}
    for refused in (r.json() for r in responses if r.status_code == 409):
        assert refused["detail"] == f"project 'race' is at its quota of {QUOTA} VMs ({QUOTA} used)"
        assert "virtpool project quota set race --vms N" in refused["hint"]
    info = server.api().project_info("race")
    assert info.usage == usage_of_rows(member) == Usage(cpus=QUOTA, memory_mib=64 * QUOTA,
                                                         disk_mib=16 * QUOTA, vms=QUOTA)


def test_each_quota_names_itself_and_its_usage(server: Server) -> None:
    member = member_of(server, "limits", cpus=2, memory_mib=1024, disk_mib=2048)
    member.create_vm("base", cpus=1, memory_mib=512, disk_mib=1024)
    cases = [
        ({"cpus": 2}, "project 'limits' would exceed its cpus quota: 2 more asked, 1 of 2 used"),
        ({"memory_mib": 768},
         "project 'limits' would exceed its memory quota: 768M more asked, 512M of 1G used"),
        ({"disk_mib": 1536},
         "project 'limits' would exceed its disk quota: 1536M more asked, 1G of 2G used"),
    ]
    for asked, message in cases:
        with pytest.raises(APIError) as refused:
            member.create_vm("toobig", **asked)  # type: ignore[arg-type]
        assert (refused.value.status, refused.value.detail) == (409, message)
    assert member.vms()[0].name == "base" and len(member.vms()) == 1
    assert server.api().project_info("limits").usage == usage_of_rows(member)


def test_resize_beyond_the_quota_is_refused_and_changes_nothing(server: Server) -> None:
    member = member_of(server, "grow", cpus=1, disk_mib=2048)
    before = member.create_vm("g1", cpus=1, disk_mib=1024)
    with pytest.raises(APIError) as refused:
        member.resize_vm("g1", cpus=2)
    assert refused.value.status == 409
    assert "cpus quota: 1 more asked, 1 of 1 used" in refused.value.detail
    with pytest.raises(APIError):
        member.resize_vm("g1", disk_mib=4096)
    after = member.vm("g1")
    assert (after.cpus, after.disk_mib) == (before.cpus, before.disk_mib)
    assert server.api().project_info("grow").usage == usage_of_rows(member)
    member.resize_vm("g1", disk_mib=2048)  # up to the quota is fine
    assert server.api().project_info("grow").usage.disk_mib == 2048 == member.vm("g1").disk_mib


def test_delete_gives_back_and_a_lowered_quota_blocks_growth_only(server: Server) -> None:
    member = member_of(server, "shrink", vms=2)
    member.create_vm("s1", cpus=2)
    member.create_vm("s2")
    result = server.api().set_quota("shrink", vms=1, cpus=1)
    assert any("vms quota (1) is below what is in use (2)" in note for note in result.notes)
    assert any("cpus quota (1) is below what is in use (3)" in note for note in result.notes)
    with pytest.raises(APIError) as refused:
        member.create_vm("s3")
    assert "at its quota of 1 VMs (2 used)" in refused.value.detail
    member.resize_vm("s1", cpus=1)  # shrinking is always allowed
    member.delete_vm("s2")
    member.delete_vm("s1")
    assert server.api().project_info("shrink").usage == Usage()
    member.create_vm("s4")
    assert server.api().set_quota("shrink", vms=None, cpus=None).project.quota.vms is None
