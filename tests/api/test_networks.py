"""Networks as a project's resource, through the CLI and the SDK against a real server on both
database backends: overlap refused within a project, allowed across, 404 across projects."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Server
from virtpool.sdk import APIError, Client


@pytest.fixture(scope="module")
def projects(api_server: Server) -> tuple[str, str]:
    for project in ("netred", "netblue"):
        api_server.api().create_project(project)
    return "netred", "netblue"


def in_project(server: Server, project: str) -> Client:
    api = server.api()
    return Client(api.url, api.token, project=project)


def test_create_list_show_delete_through_the_cli(api_server: Server, projects: tuple[str, str]) -> None:
    red, _ = projects
    made = api_server.cli("network", "create", "lan", "--subnet", "10.30.0.0/24", "--nat",
                          "--project", red, "--json")
    assert made.returncode == 0, made.stderr
    network = json.loads(made.stdout)
    assert network["subnet"] == "10.30.0.0/24" and network["gateway"] == "10.30.0.1"
    assert network["nat"] is True and network["project"] == red and network["vni"] >= 4096
    auto = json.loads(api_server.cli("network", "create", "auto", "--project", red, "--json").stdout)
    assert auto["nat"] is False and auto["subnet"].endswith("/24")
    listed = api_server.cli("network", "list", "--project", red)
    assert listed.returncode == 0 and "lan" in listed.stdout and "10.30.0.0/24" in listed.stdout
    shown = api_server.cli("network", "show", "lan", "--project", red)
    assert "10.30.0.1" in shown.stdout
    # Not in another project's listing, and "not found" there.
    assert "lan" not in api_server.cli("network", "list").stdout
    missing = api_server.cli("network", "show", "lan")
    assert missing.returncode == 1 and "no network named 'lan'" in missing.stderr
    for name in ("lan", "auto"):
        assert api_server.cli("network", "delete", name, "--project", red).returncode == 0
    assert in_project(api_server, red).networks() == []


def test_overlap_refused_in_a_project_allowed_across(api_server: Server, projects: tuple[str, str]) -> None:
    red, blue = projects
    with in_project(api_server, red) as r, in_project(api_server, blue) as b:
        first = r.create_network("one", subnet="10.40.0.0/16")
        with pytest.raises(APIError) as refused:
            r.create_network("two", subnet="10.40.7.0/24")
        assert refused.value.status == 409 and "overlaps 10.40.0.0/16 of network 'one'" in refused.value.detail
        assert [n.name for n in r.networks()] == ["one"]
        # Another project may reuse the very same subnet, and gets its own VNI.
        other = b.create_network("one", subnet="10.40.0.0/16")
        assert other.vni != first.vni
        with pytest.raises(APIError) as hidden:
            b.network("two")
        assert hidden.value.status == 404
        r.delete_network("one")
        with pytest.raises(APIError) as gone:
            b.delete_network("nothing-here")
        assert gone.value.status == 404
        assert [n.name for n in b.networks()] == ["one"]  # red's delete left blue's alone
        b.delete_network("one")


@pytest.mark.parametrize("subnet", ["10.50.0.1/24", "10.50.0.0/8", "8.8.8.0/24", "10.0.2.0/24",
                                    "not-a-subnet", "10.50.0.0/30"])
def test_bad_subnets_are_refused_and_nothing_is_made(api_server: Server, subnet: str) -> None:
    before = api_server.api().networks()
    result = api_server.cli("network", "create", "bad", "--subnet", subnet)
    assert result.returncode == 1, result.stdout
    assert "subnet" in result.stderr
    assert api_server.api().networks() == before


def test_duplicate_name_is_a_conflict(api_server: Server) -> None:
    api = api_server.api()
    api.create_network("dup")
    with pytest.raises(APIError) as dup:
        api.create_network("dup")
    assert dup.value.status == 409
    api.delete_network("dup")
