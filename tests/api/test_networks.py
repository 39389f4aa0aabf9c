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


def nic_rows(server: Server) -> int:
    import sqlite3

    with sqlite3.connect(server.data_dir / "state.db") as db:
        return db.execute("SELECT COUNT(*) FROM nics").fetchone()[0]


@pytest.mark.parametrize(("nic", "status", "words"), [
    ("lan6,ip=10.66.1.5", 422, "not a host address of network 'lan6'"),
    ("lan6,ip=10.66.0.1", 422, "is the gateway"),
    ("lan6,ip=10.66.0.255", 422, "not a host address"),
    ("lan6,ip=10.66.0.9", 409, "address 10.66.0.9 is taken"),
    ("blue-only", 404, "no network named 'blue-only'"),
])
def test_bad_nics_are_refused_and_nothing_is_made(api_server: Server, projects: tuple[str, str],
                                                   backend: str, nic: str, status: int, words: str) -> None:
    _, blue = projects
    api = api_server.api()
    if not any(n.name == "lan6" for n in api.networks()):
        api.create_network("lan6", subnet="10.66.0.0/24")
        api.create_vm("holder", networks=["lan6,ip=10.66.0.9"], memory_mib=64, disk_mib=16)
        with in_project(api_server, blue) as b:
            b.create_network("blue-only")
    vms_before = {v.name for v in api.vms()}
    rows_before = nic_rows(api_server) if backend == "sqlite" else None
    with pytest.raises(APIError) as refused:
        api.create_vm("victim", networks=[nic], memory_mib=64, disk_mib=16)
    assert refused.value.status == status and words in str(refused.value), refused.value
    assert {v.name for v in api.vms()} == vms_before
    assert [n.address for n in api.network("lan6").nics] == ["10.66.0.9"]
    if rows_before is not None:
        assert nic_rows(api_server) == rows_before


def test_a_bad_network_option_is_a_clear_cli_error(api_server: Server) -> None:
    api_server.api().create_network("clinet", subnet="10.68.0.0/24")
    for option, words in (("clinet,ip=nonsense", "not an IPv4 address"),
                          ("clinet,mac=1", "write NAME or NAME,ip=ADDRESS")):
        result = api_server.cli("vm", "create", "clivm", "--network", option)
        assert result.returncode == 1 and words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert all(v.name != "clivm" for v in api_server.api().vms())
    api_server.api().delete_network("clinet")


def test_ports_on_a_network_without_nat_are_refused(api_server: Server) -> None:
    api = api_server.api()
    api.create_network("portnet", subnet="10.67.0.0/24")
    with pytest.raises(APIError) as refused:
        api.create_vm("both", networks=["portnet"], ports=["31000:80"], memory_mib=64, disk_mib=16)
    assert refused.value.status == 422 and "NAT network" in str(refused.value)
    assert api.network("portnet").nics == [] and "both" not in [vm.name for vm in api.vms()]
    api.delete_network("portnet")
