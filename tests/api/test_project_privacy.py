"""What a project's token learns about other projects through the pool-wide views: the host
inventory, this host, placement groups, pool settings and taken token names. Nothing that names
another project or its VMs, groups or tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import Server
from virtpool.sdk import APIError, Client

# Every read a project viewer may make of pool-wide or host-wide state.
POOL_READS = ("/hosts", "/hosts/{local}", "/hosts/{reserved}", "/host", "/host/top",
              "/host/memory-policy", "/groups", "/pool/settings")


@dataclass
class Tenants:
    admin: Client
    a: str  # the viewer's project
    b: str  # the other project, whose names must not show
    viewer: str  # a viewer token of project a
    b_names: tuple[str, ...]  # project b, its VM, group and token
    local: str  # this server's own host
    reserved: str  # an inventory host open to project b only


def fresh(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def tenants(api_server: Server) -> Tenants:
    admin = api_server.api()
    a, b = fresh("pa"), fresh("pb")
    for project in (a, b):
        admin.create_project(project)
    in_a, in_b = Client(admin.url, admin.token, project=a), Client(admin.url, admin.token, project=b)
    in_a.create_vm(fresh("avm"), memory_mib=64, disk_mib=16)
    b_vm, b_group, b_token = fresh("bvm"), fresh("bgrp"), fresh("btok")
    in_b.create_group(b_group, "affinity", hard=False)
    in_b.create_vm(b_vm, memory_mib=64, disk_mib=16, group=b_group)
    admin.create_token(b_token, "viewer", project=b)
    reserved = fresh("hostb")
    admin.add_host(reserved, cpus=4, memory_mib=4096, disk_mib=4096, allowed_projects=[b])
    local = next(h.name for h in admin.hosts() if h.local)
    viewer = admin.create_token(fresh("aview"), "viewer", project=a).token
    return Tenants(admin, a, b, viewer, (b, b_vm, b_group, b_token), local, reserved)


def get(t: Tenants, token: str, path: str) -> httpx.Response:
    url = path.format(local=t.local, reserved=t.reserved)
    response = httpx.get(f"{t.admin.url}/api/v1{url}", timeout=60,
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("path", POOL_READS)
def test_a_project_viewer_sees_no_other_project_name(tenants: Tenants, path: str) -> None:
    text = get(tenants, tenants.viewer, path).text
    for name in tenants.b_names:
        assert name not in text


def test_the_host_inventory_tells_a_project_only_about_itself(tenants: Tenants) -> None:
    t = tenants
    viewer = Client(t.admin.url, t.viewer)
    hosts = {h.name: h for h in viewer.hosts()}
    assert hosts[t.reserved].allowed_projects is None and hosts[t.reserved].open_to_project is False
    assert hosts[t.local].allowed_projects is None and hosts[t.local].open_to_project is True
    # Its own VM only: project b's VM on the same host is not counted.
    assert hosts[t.local].vms == 1
    assert viewer.inventory_host(t.local).vms == 1

    # The pool admin sees the whole inventory: who may use a host, and every VM on it.
    admin_view = {h.name: h for h in t.admin.hosts()}
    assert admin_view[t.reserved].allowed_projects == [t.b]
    assert admin_view[t.reserved].open_to_project is None
    assert admin_view[t.local].vms == len(t.admin.vms(all_projects=True))
    assert admin_view[t.local].vms >= 2


def test_host_list_cli_works_for_both_kinds_of_caller(api_server: Server, tenants: Tenants) -> None:
    t = tenants
    as_viewer = api_server.cli("host", "list", token=t.viewer)
    assert as_viewer.returncode == 0, as_viewer.stderr
    assert t.reserved in as_viewer.stdout and t.b not in as_viewer.stdout
    as_viewer_json = api_server.cli("host", "list", "--json", token=t.viewer)
    assert as_viewer_json.returncode == 0 and t.b not in as_viewer_json.stdout
    as_admin = api_server.cli("host", "list", "--json")
    assert as_admin.returncode == 0, as_admin.stderr
    assert t.b in as_admin.stdout  # the reserved host's allowed_projects


def test_a_token_name_taken_in_another_project_is_refused_without_naming_it(
        tenants: Tenants) -> None:
    t = tenants
    a_admin = Client(t.admin.url, t.admin.create_token(fresh("aadm"), "admin", project=t.a).token)
    b_token = t.b_names[3]
    with pytest.raises(APIError) as taken:
        a_admin.create_token(b_token, "viewer")
    assert taken.value.status == 409
    message = f"{taken.value.detail} {taken.value.hint}"
    assert f"the token name '{b_token}' is not available" in message
    assert "exists" not in message and t.b not in message
    # A name taken in the caller's own project is simply "exists"; a pool admin is told so too.
    own = fresh("aown")
    a_admin.create_token(own, "viewer")
    for client, name in ((a_admin, own), (t.admin, b_token)):
        with pytest.raises(APIError) as again:
            client.create_token(name, "viewer", project=t.a)
        assert again.value.status == 409 and again.value.detail == f"a token named '{name}' exists"
