"""Security groups as a project's resource, through the CLI and the SDK against a real server on
both database backends: create/list/show/delete, rules added and removed (by id and as they
were added), VMs put in groups at create and later; every bad input a clear 4xx that changes
nothing; another project's group is "not found" everywhere it can be named."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.conftest import Server
from virtpool.sdk import APIError, Client


def in_project(server: Server, project: str) -> Client:
    api = server.api()
    return Client(api.url, api.token, project=project)


def membership_rows(server: Server) -> list[tuple[str, str]]:
    with sqlite3.connect(server.data_dir / "state.db") as db:
        return sorted(db.execute("SELECT vm_id, secgroup_id FROM vm_secgroups").fetchall())


@pytest.fixture(scope="module")
def lan(api_server: Server) -> str:
    api = api_server.api()
    api.create_project("sgother")
    api.create_network("sglan", subnet="10.71.0.0/24")
    with in_project(api_server, "sgother") as other:
        other.create_secgroup("theirs")
    return "sglan"


def test_create_list_show_delete_and_rules_through_the_cli(api_server: Server, lan: str) -> None:
    made = api_server.cli("secgroup", "create", "web", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout) == {"name": "web", "project": "default", "rules": [], "vms": []}
    added = api_server.cli("secgroup", "rule", "add", "web", "--ingress", "--proto", "tcp",
                           "--port", "8000-8100", "--from", "10.0.0.0/8")
    assert added.returncode == 0, added.stderr
    assert "ingress tcp port 8000-8100 from 10.0.0.0/8" in added.stdout
    ping = json.loads(api_server.cli("secgroup", "rule", "add", "web", "--ingress", "--proto",
                                     "icmp", "--json").stdout)
    assert ping["proto"] == "icmp" and ping["port_min"] is None and ping["remote_cidr"] is None
    api_server.cli("secgroup", "create", "app")
    by_group = api_server.cli("secgroup", "rule", "add", "app", "--ingress", "--proto", "tcp",
                              "--port", "5432", "--from-group", "web")
    assert by_group.returncode == 0 and "from group web" in by_group.stdout, by_group.stderr
    egress = api_server.cli("secgroup", "rule", "add", "app", "--egress", "--proto", "udp",
                            "--port", "53", "--to", "192.0.2.53/32")
    assert egress.returncode == 0 and "to 192.0.2.53/32" in egress.stdout, egress.stderr
    shown = api_server.cli("secgroup", "show", "web")
    assert shown.returncode == 0 and "8000-8100" in shown.stdout and ping["id"] in shown.stdout
    listed = api_server.cli("secgroup", "list")
    assert "web" in listed.stdout and "app" in listed.stdout
    # The same rule twice is a conflict that names the first.
    again = api_server.cli("secgroup", "rule", "add", "web", "--ingress", "--proto", "icmp")
    assert again.returncode == 1 and ping["id"] in again.stderr
    # Removed by id, and by the spec it was added with.
    assert api_server.cli("secgroup", "rule", "remove", "web", ping["id"]).returncode == 0
    by_spec = api_server.cli("secgroup", "rule", "remove", "web", "--ingress", "--proto", "tcp",
                             "--port", "8000-8100", "--from", "10.0.0.0/8")
    assert by_spec.returncode == 0, by_spec.stderr
    assert api_server.api().secgroup("web").rules == []
    # web is named by a rule of app: it cannot go before that rule does.
    refused = api_server.cli("secgroup", "delete", "web")
    assert refused.returncode == 1 and "rules of security group(s) app name 'web'" in refused.stderr
    for rule in api_server.api().secgroup("app").rules:
        api_server.api().remove_secgroup_rule("app", rule.id)
    for name in ("web", "app"):
        assert api_server.cli("secgroup", "delete", name).returncode == 0
    assert api_server.api().secgroups() == []


def test_vms_join_groups_at_create_and_later(api_server: Server, lan: str, backend: str) -> None:
    api = api_server.api()
    api.create_secgroup("front")
    api.create_secgroup("ssh")
    cli = api_server.cli("vm", "create", "sgvm", "--network", lan, "--secgroup", "front",
                         "--secgroup", "ssh", "--memory", "64M", "--disk", "16M")
    assert cli.returncode == 0, cli.stderr
    assert api.vm("sgvm").secgroups == ["front", "ssh"]
    assert api.secgroup("front").vms == ["sgvm"]
    assert "front, ssh" in api_server.cli("vm", "show", "sgvm").stdout
    refused = api_server.cli("secgroup", "delete", "front")
    assert refused.returncode == 1 and "still has VMs in it: sgvm" in refused.stderr
    moved = api_server.cli("vm", "set", "sgvm", "--secgroup", "ssh")
    assert moved.returncode == 0 and "security groups: ssh" in moved.stdout, moved.stderr
    assert api.secgroup("front").vms == []
    cleared = api_server.cli("vm", "set", "sgvm", "--no-secgroup", "--json")
    assert cleared.returncode == 0 and json.loads(cleared.stdout)["secgroups"] == []
    usage = api_server.cli("vm", "set", "sgvm")
    assert usage.returncode == 2 and "--no-secgroup" in usage.stderr
    api.delete_vm("sgvm")
    for name in ("front", "ssh"):
        api.delete_secgroup(name)
    if backend == "sqlite":
        assert membership_rows(api_server) == []


@pytest.mark.parametrize(("args", "words"), [
    (["--ingress", "--proto", "gre"], "proto"),
    (["--ingress", "--proto", "tcp", "--port", "0"], "port 0 is out of range"),
    (["--ingress", "--proto", "tcp", "--port", "70000"], "port 70000 is out of range"),
    (["--ingress", "--proto", "udp", "--port", "90-80"], "runs backwards"),
    (["--ingress", "--proto", "tcp", "--port", "http"], "cannot read port 'http'"),
    (["--ingress", "--proto", "icmp", "--port", "22"], "icmp has no ports"),
    (["--ingress", "--proto", "tcp", "--from", "10.0.0.1/8"], "not an IPv4 CIDR"),
    (["--ingress", "--proto", "tcp", "--from", "nowhere"], "not an IPv4 CIDR"),
    (["--ingress", "--proto", "tcp", "--from", "10.0.0.0/8", "--from-group", "guard"],
     "not both"),
    (["--ingress", "--proto", "tcp", "--from-group", "theirs"], "no security group named 'theirs'"),
    (["--ingress", "--egress", "--proto", "tcp"], "--ingress or --egress"),
    (["--proto", "tcp"], "--ingress or --egress"),
])
def test_bad_rules_are_refused_and_change_nothing(api_server: Server, lan: str, args: list[str],
                                                  words: str) -> None:
    api = api_server.api()
    if not any(g.name == "guard" for g in api.secgroups()):
        api.create_secgroup("guard")
        api.add_secgroup_rule("guard", "ingress", "tcp", ports="22")
    before = api.secgroup("guard")
    result = api_server.cli("secgroup", "rule", "add", "guard", *args)
    assert result.returncode in (1, 2) and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert api.secgroup("guard") == before


def test_bad_input_through_the_api_is_a_4xx_that_changes_nothing(api_server: Server, lan: str,
                                                                  backend: str) -> None:
    api = api_server.api()
    api.create_secgroup("mine")
    api.create_vm("member", networks=[lan], secgroups=["mine"], memory_mib=64, disk_mib=16)
    vms_before = {v.name for v in api.vms()}
    rows_before = membership_rows(api_server) if backend == "sqlite" else None
    cases: list[tuple[str, str, dict[str, object], int, str]] = [
        ("POST", "/secgroups/mine/rules", {"direction": "sideways", "proto": "tcp"}, 422, "direction"),
        ("POST", "/secgroups/mine/rules", {"direction": "ingress", "proto": "tcp", "port_min": 65536}, 422,
         "out of range"),
        ("POST", "/secgroups/mine/rules", {"direction": "ingress", "proto": "tcp", "port_max": 80}, 422,
         "port_max needs port_min"),
        ("POST", "/secgroups/mine/rules", {"direction": "ingress", "proto": "icmp", "port_min": 8}, 422,
         "icmp has no ports"),
        ("POST", "/secgroups/mine/rules", {"direction": "ingress", "proto": "tcp",
                                           "remote_cidr": "300.1.1.0/24"}, 422, "not an IPv4 CIDR"),
        ("POST", "/secgroups/theirs/rules", {"direction": "ingress", "proto": "tcp"}, 404,
         "no security group named 'theirs'"),
        ("POST", "/secgroups", {"name": "Bad Name"}, 422, "not a valid name"),
        ("POST", "/secgroups", {"name": "mine"}, 409, "exists"),
        ("GET", "/secgroups/theirs", {}, 404, "no security group named 'theirs'"),
        ("DELETE", "/secgroups/theirs", {}, 404, "no security group named 'theirs'"),
        ("DELETE", "/secgroups/mine/rules/feedbeef", {}, 404, "has no rule 'feedbeef'"),
        ("PUT", "/vms/member/secgroups", {"secgroups": ["theirs"]}, 404,
         "no security group named 'theirs'"),
        ("PUT", "/vms/member/secgroups", {"secgroups": ["mine", "mine"]}, 422, "named twice"),
        ("POST", "/vms", {"name": "joiner", "networks": [{"network": lan}], "secgroups": ["theirs"],
                          "memory_mib": 64, "disk_mib": 16}, 404, "no security group named 'theirs'"),
        ("POST", "/vms", {"name": "joiner", "secgroups": ["mine"], "memory_mib": 64, "disk_mib": 16},
         422, "give a --network too"),
    ]
    for method, path, body, status, words in cases:
        with pytest.raises(APIError) as refused:
            api._call(method, path, json=body if method in ("POST", "PUT") else None)
        assert refused.value.status == status and words in str(refused.value), (path, body, refused.value)
    assert api.secgroup("mine").rules == [] and api.secgroup("mine").vms == ["member"]
    assert {v.name for v in api.vms()} == vms_before
    assert api.vm("member").secgroups == ["mine"]
    if rows_before is not None:
        assert membership_rows(api_server) == rows_before
    # Another project sees none of it, and cannot put its VMs in this project's group.
    with in_project(api_server, "sgother") as other:
        assert [g.name for g in other.secgroups()] == ["theirs"]
        with pytest.raises(APIError) as hidden:
            other.secgroup("mine")
        assert hidden.value.status == 404
    api.delete_vm("member")
    api.delete_secgroup("mine")
