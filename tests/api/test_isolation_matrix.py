"""The tenant-isolation matrix (issue 3, item 9): every endpoint × every role × own and other
project, against a real `virtpool up` server.

Callers: the pool admin (the bootstrap token) and an admin, a member and a viewer of project
'a'. "own" acts on project 'a', "other" on project 'b' (the request names it with
``?project=b`` and B's resource). Every cell gets fresh resources, so mutating calls do not
disturb each other. No VM boots: the VMs are placed on a large inventory host that has no agent
(the local host is too small for them all), so a start and a log read answer 503 "no agent
attached", and stop/pause/resume/exec find a stopped VM (409) — all mean "the role may do this,
the VM cannot right now". A missing, expired or revoked token gets 401 everywhere.

A new endpoint without a row here fails ``test_every_endpoint_is_in_the_matrix`` (the endpoints
come from the server's own OpenAPI document). The console websocket is not in that document; its
cells are in test_tenancy.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, make_server

API = "/api/v1"
CALLERS = ("pool", "admin", "member", "viewer")
BROKEN = ("anonymous", "expired", "revoked")

# (own, other) for project endpoints; a bare status for pool-wide ones (host, images, the
# project list), where "other project" has no meaning.
Cell = tuple[int, int] | int
#  method, path                            pool         a-admin      a-member     a-viewer
MATRIX: dict[tuple[str, str], tuple[Cell, Cell, Cell, Cell]] = {
    ("GET", "/vms"):                       ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("POST", "/vms"):                      ((201, 201), (201, 404), (201, 404), (403, 404)),
    ("GET", "/vms/{name}"):                ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("DELETE", "/vms/{name}"):             ((204, 204), (204, 404), (204, 404), (403, 404)),
    ("POST", "/vms/{name}/start"):         ((503, 503), (503, 404), (503, 404), (403, 404)),
    ("POST", "/vms/{name}/stop"):          ((409, 409), (409, 404), (409, 404), (403, 404)),
    ("POST", "/vms/{name}/restart"):       ((409, 409), (409, 404), (409, 404), (403, 404)),
    ("POST", "/vms/{name}/pause"):         ((409, 409), (409, 404), (409, 404), (403, 404)),
    ("POST", "/vms/{name}/resume"):        ((409, 409), (409, 404), (409, 404), (403, 404)),
    ("POST", "/vms/{name}/resize"):        ((200, 200), (200, 404), (200, 404), (403, 404)),
    ("GET", "/vms/{name}/stats"):          ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("POST", "/vms/{name}/exec"):          ((409, 409), (409, 404), (409, 404), (403, 404)),
    ("GET", "/vms/{name}/logs"):           ((503, 503), (503, 404), (503, 404), (503, 404)),
    ("GET", "/events"):                    ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("GET", "/events/stream"):             ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("GET", "/operations"):                ((200, 200), (200, 404), (200, 404), (200, 404)),
    # An image build's operation belongs to no project: only pool-wide tokens see it.
    ("GET", "/operations/{op_id}"):        (200, 404, 404, 404),
    ("GET", "/audit"):                     ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("GET", "/projects/{name}"):           ((200, 200), (200, 404), (200, 404), (200, 404)),
    # A project with VMs is never deleted: the pool admin is allowed, and refused for that.
    ("DELETE", "/projects/{name}"):        ((409, 409), (403, 404), (403, 404), (403, 404)),
    ("PUT", "/projects/{name}/quota"):     ((200, 200), (403, 404), (403, 404), (403, 404)),
    ("GET", "/tokens"):                    ((200, 200), (200, 404), (403, 404), (403, 404)),
    ("POST", "/tokens"):                   ((201, 201), (201, 404), (403, 404), (403, 404)),
    ("DELETE", "/tokens/{name}"):          ((200, 200), (200, 404), (403, 404), (403, 404)),
    ("GET", "/projects"):                  (200, 200, 200, 200),
    ("POST", "/projects"):                 (201, 403, 403, 403),
    ("GET", "/host"):                      (200, 200, 200, 200),
    ("GET", "/version"):                   (200, 200, 200, 200),
    ("GET", "/host/top"):                  (200, 200, 200, 200),
    ("GET", "/host/memory-policy"):        (200, 200, 200, 200),
    ("PUT", "/host/memory-policy"):        (200, 403, 403, 403),
    ("GET", "/images"):                    (200, 200, 200, 200),
    ("GET", "/images/{name}"):             (200, 200, 200, 200),
    # Pool admins pass authorization and hit the checks behind it: the image is in use (409),
    # the name is invalid (422), no form was sent (422).
    ("DELETE", "/images/{name}"):          (409, 403, 403, 403),
    ("POST", "/images/{name}/build"):      (422, 403, 403, 403),
    ("POST", "/images"):                   (422, 403, 403, 403),
    ("GET", "/images/{name}/build"):       (200, 200, 200, 200),  # the fixture's build
    ("GET", "/groups"):                    ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("POST", "/groups"):                   ((201, 201), (201, 404), (201, 404), (403, 404)),
    ("GET", "/groups/{name}"):             ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("DELETE", "/groups/{name}"):          ((204, 204), (204, 404), (204, 404), (403, 404)),
    ("GET", "/hosts"):                     (200, 200, 200, 200),
    ("POST", "/hosts"):                    (201, 403, 403, 403),
    ("POST", "/hosts/join-tokens"):        (201, 403, 403, 403),
    ("GET", "/hosts/{name}"):              (200, 200, 200, 200),
    # The inventory host holds the matrix's VMs: the pool admin is allowed, and refused for that.
    ("DELETE", "/hosts/{name}"):           (409, 403, 403, 403),
    ("PUT", "/hosts/{name}/ratios"):       (200, 403, 403, 403),
    ("PUT", "/hosts/{name}/labels"):       (200, 403, 403, 403),
    ("PUT", "/hosts/{name}/state"):        (200, 403, 403, 403),
    ("GET", "/pool/settings"):             (200, 200, 200, 200),
    ("PUT", "/pool/settings"):             (200, 403, 403, 403),
    ("GET", "/pool/rebalance"):            (200, 403, 403, 403),
    # A threshold of 100 pp needs no move, so applying the plan needs no live migration.
    ("POST", "/pool/rebalance"):           (200, 403, 403, 403),
    # What the dashboard reads: a VM's usage history, host use, VM counts, the event cursor.
    ("GET", "/vms/{name}/history"):        ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("GET", "/pool/host-use"):             (200, 200, 200, 200),
    ("GET", "/pool/vm-counts"):            ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("GET", "/pool/latest-event"):         ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("GET", "/whoami"):                    (200, 200, 200, 200),
    ("GET", "/networks"):                  ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("POST", "/networks"):                 ((201, 201), (201, 404), (201, 404), (403, 404)),
    ("GET", "/networks/{name}"):           ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("DELETE", "/networks/{name}"):        ((204, 204), (204, 404), (204, 404), (403, 404)),
    ("GET", "/secgroups"):                 ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("POST", "/secgroups"):                ((201, 201), (201, 404), (201, 404), (403, 404)),
    ("GET", "/secgroups/{name}"):          ((200, 200), (200, 404), (200, 404), (200, 404)),
    ("DELETE", "/secgroups/{name}"):       ((204, 204), (204, 404), (204, 404), (403, 404)),
    ("POST", "/secgroups/{name}/rules"):   ((201, 201), (201, 404), (201, 404), (403, 404)),
    ("DELETE", "/secgroups/{name}/rules/{rule_id}"): ((204, 204), (204, 404), (204, 404), (403, 404)),
    # The matrix's VMs have no NIC on a network: taking them out of every group is allowed.
    ("PUT", "/vms/{name}/secgroups"):      ((200, 200), (200, 404), (200, 404), (403, 404)),
    # The matrix's VMs are on a host with no agent: a snapshot or clone of a disk needs one.
    ("GET", "/vms/{name}/snapshots"):      ((503, 503), (503, 404), (503, 404), (503, 404)),
    ("POST", "/vms/{name}/snapshots"):     ((503, 503), (503, 404), (503, 404), (403, 404)),
    ("POST", "/vms/{name}/snapshots/{snapshot}/restore"): ((503, 503), (503, 404), (503, 404), (403, 404)),
    ("DELETE", "/vms/{name}/snapshots/{snapshot}"): ((503, 503), (503, 404), (503, 404), (403, 404)),
    ("POST", "/vms/{name}/clone"):         ((503, 503), (503, 404), (503, 404), (403, 404)),
    # Backups name host directories: pool admins only; the matrix's VMs are stopped.
    ("POST", "/vms/{name}/backups"):       ((409, 409), (403, 404), (403, 404), (403, 404)),
    ("GET", "/backups"):                   (404, 403, 403, 403),
    ("POST", "/backups/restore"):          ((404, 404), (403, 404), (403, 404), (403, 404)),
}
# Where the matrix's VMs are placed: room for all of them (the local host is a small machine).
BIG_HOST = "matrix-big"


@dataclass
class Target:
    """Fresh resources in one project for one cell."""

    project: str
    vm: str
    token: str
    group: str
    network: str = "none"
    secgroup: str = "none"
    rule: str = "none"


_counter = itertools.count()


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"


def path_name(path: str, target: Target) -> str:
    """What fills in {name}: the target's project, token or VM, or the shared image."""
    if path.startswith("/projects/"):
        return target.project
    if path.startswith("/tokens/"):
        return target.token
    if path.startswith("/images/"):
        return "default"
    if path.startswith("/groups/"):
        return target.group
    if path.startswith("/hosts/"):
        return BIG_HOST
    if path.startswith("/networks/"):
        return target.network
    if path.startswith("/secgroups/"):
        return target.secgroup
    return target.vm


# Request bodies; endpoints not named here get none.
BODIES: dict[tuple[str, str], Callable[[Target], dict[str, Any]]] = {
    ("POST", "/vms"): lambda t: {"name": fresh("new"), "memory_mib": 128, "disk_mib": 16},
    ("POST", "/vms/{name}/resize"): lambda t: {"cpu_weight": 200},
    ("POST", "/vms/{name}/exec"): lambda t: {"argv": ["true"]},
    ("PUT", "/projects/{name}/quota"): lambda t: {"cpus": None},
    ("POST", "/tokens"): lambda t: {"name": fresh("tok"), "role": "viewer", "project": t.project},
    ("POST", "/projects"): lambda t: {"name": fresh("proj")},
    ("PUT", "/host/memory-policy"): lambda t: {},
    ("POST", "/groups"): lambda t: {"name": fresh("grp"), "policy": "anti-affinity"},
    ("POST", "/hosts/join-tokens"): lambda t: {"expires_s": 60},
    ("POST", "/hosts"): lambda t: {"name": fresh("host"), "cpus": 1, "memory_mib": 1024,
                                   "disk_mib": 1024},
    ("PUT", "/hosts/{name}/ratios"): lambda t: {"cpu": 64},
    ("PUT", "/hosts/{name}/labels"): lambda t: {"set": {"rack": "1"}},
    ("PUT", "/hosts/{name}/state"): lambda t: {"state": "up"},
    ("PUT", "/pool/settings"): lambda t: {"weigher": "spread"},
    ("POST", "/pool/rebalance"): lambda t: {"threshold_pp": 100},
    ("POST", "/networks"): lambda t: {"name": fresh("net")},
    ("POST", "/secgroups"): lambda t: {"name": fresh("sg")},
    ("POST", "/secgroups/{name}/rules"): lambda t: {"direction": "ingress", "proto": "icmp"},
    ("PUT", "/vms/{name}/secgroups"): lambda t: {"secgroups": []},
    ("POST", "/vms/{name}/snapshots"): lambda t: {"name": "snap"},
    ("POST", "/vms/{name}/clone"): lambda t: {"name": fresh("clone")},
    ("POST", "/vms/{name}/backups"): lambda t: {"target": f"/nonexistent/virtpool-matrix/{fresh('bk')}"},
    ("POST", "/backups/restore"): lambda t: {"source": "/nonexistent/virtpool-matrix",
                                             "name": fresh("restored")},
}
# Query parameters; endpoints not named here get only the project.
QUERIES: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/backups"): {"source": "/nonexistent/virtpool-matrix"},
}
# The build endpoint is asked for an invalid name, so that no pool admin call starts a build.
NAME_OVERRIDE = {("POST", "/images/{name}/build"): "Not_A_Name"}


@dataclass
class Pool:
    server: Server
    url: str
    secrets: dict[str, str | None]
    build_op: str  # the id of an operation (an image build, of the image there already)

    def http(self, caller: str) -> httpx.Client:
        secret = self.secrets[caller]
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=self.url + API, headers=headers, timeout=60)

    def target(self, project: str, with_network: bool = False, with_secgroup: bool = False) -> Target:
        """Fresh resources in ``project``; a network only where the cell needs one (a project
        has room for 256 default subnets, fewer than the matrix has cells)."""
        with self.http("pool") as http:
            name = fresh("vm")
            response = http.post("/vms", params={"project": project},
                                 json={"name": name, "memory_mib": 128, "disk_mib": 16})
            assert response.status_code == 201, response.text
            token = fresh("victim")
            response = http.post("/tokens", json={"name": token, "role": "viewer", "project": project})
            assert response.status_code == 201, response.text
            group = fresh("grp")
            response = http.post("/groups", params={"project": project},
                                 json={"name": group, "policy": "affinity", "hard": False})
            assert response.status_code == 201, response.text
            network = "none"
            if with_network:
                network = fresh("net")
                response = http.post("/networks", params={"project": project}, json={"name": network})
                assert response.status_code == 201, response.text
            secgroup = rule = "none"
            if with_secgroup:
                secgroup = fresh("sg")
                response = http.post("/secgroups", params={"project": project}, json={"name": secgroup})
                assert response.status_code == 201, response.text
                response = http.post(f"/secgroups/{secgroup}/rules", params={"project": project},
                                     json={"direction": "ingress", "proto": "tcp", "port_min": 22})
                assert response.status_code == 201, response.text
                rule = response.json()["id"]
        return Target(project=project, vm=name, token=token, group=group, network=network,
                      secgroup=secgroup, rule=rule)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Pool]:
    server = make_server(tmp_path_factory, image_cache, "matrix",
                         extra_args=("--memory-budget", "64M", "--memory-threshold", "0"))
    try:
        admin = server.api()
        admin.add_host(BIG_HOST, cpus=1 << 16, memory_mib=1 << 40, disk_mib=1 << 40)
        for project in ("a", "b"):
            admin.create_project(project)
        secrets: dict[str, str | None] = {"pool": admin.token, "anonymous": None}
        for role in ("admin", "member", "viewer"):
            secrets[role] = admin.create_token(f"a-{role}", role, project="a").token
            # Project b's tokens exist too: the matrix shows they never reach into 'a' either.
            secrets[f"b-{role}"] = admin.create_token(f"b-{role}", role, project="b").token
        secrets["expired"] = admin.create_token("a-expired", "admin", project="a", expires_in_s=1).token
        secrets["revoked"] = admin.create_token("a-revoked", "admin", project="a").token
        admin.revoke_token("a-revoked")
        time.sleep(1.5)  # let 'a-expired' expire
        build = admin.wait_operation(admin.build_image("default"), timeout=120)
        yield Pool(server, admin.url, secrets, build.id)
    finally:
        server.cleanup()


def request(pool: Pool, caller: str, method: str, path: str, target: Target, scoped: bool) -> httpx.Response:
    key = (method, path)
    url = path.replace("{name}", NAME_OVERRIDE.get(key) or path_name(path, target)).replace(
        "{op_id}", pool.build_op).replace("{snapshot}", "snap").replace("{rule_id}", target.rule)
    body = BODIES.get(key)
    kwargs: dict[str, Any] = {"params": {**({"project": target.project} if scoped else {}),
                                         **QUERIES.get(key, {})}}
    if body is not None:
        kwargs["json"] = body(target)
    with pool.http(caller) as http:
        if path == "/events/stream":  # endless: its status and headers are the answer
            with http.stream(method, url, **kwargs) as streamed:
                if streamed.status_code >= 400:
                    streamed.read()
                return httpx.Response(streamed.status_code, headers=streamed.headers)
        return http.request(method, url, **kwargs)


def cells() -> Iterator[Any]:
    for (method, path), row in MATRIX.items():
        for caller, cell in zip(CALLERS, row, strict=True):
            if isinstance(cell, tuple):
                for side, status in zip(("own", "other"), cell, strict=True):
                    yield pytest.param(method, path, caller, side, status, id=f"{method} {path} {caller} {side}")
            else:
                yield pytest.param(method, path, caller, "pool-wide", cell, id=f"{method} {path} {caller}")


@pytest.mark.parametrize(("method", "path", "caller", "side", "expected"), list(cells()))
def test_cell(pool: Pool, method: str, path: str, caller: str, side: str, expected: int) -> None:
    target = pool.target("b" if side == "other" else "a", with_network=path.startswith("/networks/"),
                         with_secgroup=path.startswith("/secgroups/"))
    response = request(pool, caller, method, path, target, scoped=side != "pool-wide")
    assert response.status_code == expected, f"{method} {path} as {caller} ({side}): {response.text}"
    if expected >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("caller", BROKEN)
@pytest.mark.parametrize(("method", "path"), list(MATRIX))
def test_bad_tokens_are_refused_everywhere(pool: Pool, method: str, path: str, caller: str) -> None:
    target = Target(project="a", vm="any", token="any", group="any")
    response = request(pool, caller, method, path, target, scoped=True)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"


def test_every_endpoint_is_in_the_matrix(pool: Pool) -> None:
    spec = httpx.get(pool.url + "/openapi.json").json()
    endpoints = {(method.upper(), path.removeprefix(API))
                 for path, item in spec["paths"].items() if path.startswith(API)
                 for method in item if method in ("get", "post", "put", "patch", "delete")}
    assert endpoints == set(MATRIX), (
        f"without a matrix row: {sorted(endpoints - set(MATRIX))}; "
        f"gone from the API: {sorted(set(MATRIX) - endpoints)}")
