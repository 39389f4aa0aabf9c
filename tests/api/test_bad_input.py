"""Bad input gets a 4xx problem+json and changes nothing: malformed JSON, wrong types, huge
bodies, unknown fields, names with path separators or shell metacharacters."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server

PROBLEM = "application/problem+json"


@pytest.fixture
def http(api_server: Server) -> Iterator[httpx.Client]:
    api = api_server.api()
    with httpx.Client(base_url=f"{api.url}/api/v1", headers={"Authorization": f"Bearer {api.token}"},
                      timeout=60) as client:
        yield client


def state(api_server: Server) -> tuple[object, ...]:
    api = api_server.api()
    return ([v.name for v in api.vms()], [i.name for i in api.images()],
            sorted(p.name for p in (api_server.data_dir / "vms").glob("*")))


def refused(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


def chunks(total: int) -> Iterator[bytes]:
    for _ in range(total >> 20):
        yield b" " * (1 << 20)


BAD_BODIES = [
    pytest.param(b'{"name": "x1"', 422, "JSON", id="malformed-json"),
    pytest.param(b'{"name": 5}', 422, "name", id="name-not-a-string"),
    pytest.param(b'{"name": "x1", "cpus": "many"}', 422, "cpus", id="cpus-not-a-number"),
    pytest.param(b'{"name": "x1", "memory_mib": [1]}', 422, "memory_mib", id="memory-a-list"),
    pytest.param(b'["x1"]', 422, "", id="array-not-object"),
    pytest.param(b'{"name": "x1", "colour": "red"}', 422, "colour", id="unknown-field"),
    pytest.param(b'{"name": "x1", "ports": [{"host": 8000, "guest": 80, "udp": true}]}', 422, "udp",
                 id="unknown-nested-field"),
    pytest.param(b'{"name": "../../etc"}', 422, "1-63 characters", id="name-path-traversal"),
    pytest.param(b'{"name": "a/b"}', 422, "1-63 characters", id="name-slash"),
    pytest.param(b'{"name": "x; rm -rf /"}', 422, "1-63 characters", id="name-shell-semicolon"),
    pytest.param(b'{"name": "$(reboot)"}', 422, "1-63 characters", id="name-shell-substitution"),
    pytest.param(b'{"name": "x1", "image": "../default"}', 422, "", id="image-path-traversal"),
]


@pytest.mark.parametrize(("body", "status", "mentions"), BAD_BODIES)
def test_bad_create_bodies_are_refused(api_server: Server, http: httpx.Client, body: bytes, status: int,
                                       mentions: str) -> None:
    before = state(api_server)
    problem = refused(http.post("/vms", content=body, headers={"content-type": "application/json"}), status)
    assert mentions in str(problem["detail"])
    assert state(api_server) == before


def test_unknown_fields_in_other_bodies_are_refused(api_server: Server, http: httpx.Client) -> None:
    api_server.api().create_vm("victim")
    before = state(api_server)
    refused(http.post("/vms/victim/resize", json={"memory_mib": 300, "turbo": True}), 422)
    refused(http.post("/vms/victim/exec", json={"argv": ["true"], "shell": True}), 422)
    refused(http.put("/host/memory-policy", json={"budget_mib": 1024, "extra": 1}), 422)
    assert api_server.api().vm("victim").memory_mib == 256
    assert state(api_server) == before
    api_server.api().delete_vm("victim")


def test_huge_body_with_content_length_is_refused_before_it_is_read(api_server: Server,
                                                                    http: httpx.Client) -> None:
    before = state(api_server)
    body = b'{"name": "big", "kernel_args": "' + b"a" * (3 << 20) + b'"}'
    problem = refused(http.post("/vms", content=body, headers={"content-type": "application/json"}), 413)
    assert "limit" in str(problem["detail"]) and problem["hint"]
    assert state(api_server) == before


def test_huge_chunked_body_is_refused(api_server: Server, http: httpx.Client) -> None:
    before = state(api_server)
    refused(http.post("/vms", content=chunks(4 << 20), headers={"content-type": "application/json"}), 413)
    assert state(api_server) == before


def test_image_upload_keeps_its_larger_limit(api_server: Server, http: httpx.Client,
                                             tmp_path: pytest.TempPathFactory) -> None:
    kernel = api_server.data_dir / "images" / "default" / "vmlinux"
    assert kernel.stat().st_size > 2 << 20  # larger than any JSON body may be
    with kernel.open("rb") as handle:
        response = http.post("/images", data={"name": "bigkernel"}, files={"kernel": ("kernel", handle)})
    assert response.status_code == 201, response.text
    http.delete("/images/bigkernel")


@pytest.mark.parametrize("name", ["../etc", "a b", "x;reboot", "$(id)", "..", "A"])
def test_bad_image_names_are_refused(api_server: Server, http: httpx.Client, name: str) -> None:
    before = state(api_server)
    kernel = api_server.data_dir / "images" / "default" / "vmlinux"
    with kernel.open("rb") as handle:
        response = http.post("/images", data={"name": name}, files={"kernel": ("kernel", handle)})
    refused(response, 422)
    built = http.post(f"/images/{name}/build")
    assert 400 <= built.status_code < 500 and built.headers["content-type"] == PROBLEM
    assert state(api_server) == before


@pytest.mark.parametrize("path", ["/vms/a%2Fb", "/vms/..%2F..%2Fetc", "/vms/x;reboot", "/vms/$(id)/stats",
                                  "/images/..%2Fdefault", "/operations/..%2F..%2Fvms"])
def test_odd_names_in_paths_are_not_found(api_server: Server, http: httpx.Client, path: str) -> None:
    refused(http.get(path), 404)


def test_wrong_query_types_are_refused(http: httpx.Client) -> None:
    refused(http.get("/vms", params={"limit": "lots"}), 422)
    refused(http.get("/events", params={"after": -1}), 422)
    refused(http.get("/operations", params={"status": "exploded"}), 422)


@pytest.mark.parametrize("path", ["/events?vm=a%00b", "/operations?target=x%00", "/vms/a%00b"])
def test_nul_characters_are_never_a_server_error(http: httpx.Client, path: str) -> None:
    # SQLite can look such a value up (and find nothing); PostgreSQL cannot hold it: 422 there.
    response = http.get(path)
    assert response.status_code in (200, 404, 422), response.text
    if response.status_code != 200:
        assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("role", [None, "viewer"])
def test_an_image_upload_by_a_non_admin_is_refused_before_its_body_is_read(
        api_server: Server, role: str | None) -> None:
    """The upload is sent as an endless chunked body: the answer must come without it."""
    api = api_server.api()
    headers = ""
    if role is not None:
        secret = api.create_token(f"uploader-{role}-{id(api)}", role, project="default").token
        headers = f"Authorization: Bearer {secret}\r\n"
    address = httpx.URL(api.url)
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        sock.sendall((f"POST /api/v1/images HTTP/1.1\r\nHost: {address.host}\r\n{headers}"
                      "Content-Type: multipart/form-data; boundary=x\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n").encode())
        sock.sendall(b"100000\r\n" + b"\0" * 0x100000 + b"\r\n")  # 1 MiB of many, never ended
        answer = sock.recv(4096).decode(errors="replace")  # times out if the body is awaited
    assert answer.startswith("HTTP/1.1 401" if role is None else "HTTP/1.1 403"), answer
    assert PROBLEM in answer
