"""Which requests the fast routes of api/fast_reads.py take, and which they leave to FastAPI's
routes (whose validation then answers, 422 included)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import Match

from virtpool.api.fast_reads import routes


def scope(path: str, query: str = "", method: str = "GET", **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "",
            "query_string": query.encode("latin-1"), "headers": [], **extra}


def taken(path: str, query: str = "", **extra: Any) -> dict[str, Any] | None:
    for route in routes():
        match, child = route.matches(scope(path, query, **extra))
        if match is Match.FULL:
            return child["virtpool.fast_params"]
    return None


@pytest.mark.parametrize(("path", "query", "params"), [
    ("/api/v1/vms/web", "", {"name": "web", "project": None}),
    ("/api/v1/vms/web", "project=p1", {"name": "web", "project": "p1"}),
    ("/api/v1/vms/0123abcd", "project=", {"name": "0123abcd", "project": ""}),
    ("/api/v1/vms", "", {"project": None, "limit": 100, "offset": 0, "after": None}),
    ("/api/v1/vms", "limit=100&after=vm-00042:0a1b", {"project": None, "limit": 100, "offset": 0,
                                                      "after": "vm-00042:0a1b"}),
    ("/api/v1/vms", "limit=1000&offset=9900&project=p", {"project": "p", "limit": 1000, "offset": 9900,
                                                         "after": None}),
])
def test_the_plain_reads_are_taken(path: str, query: str, params: dict[str, Any]) -> None:
    assert taken(path, query) == params


@pytest.mark.parametrize(("path", "query"), [
    ("/api/v1/vms/web", "wait_for=running"),  # a long poll: FastAPI's route
    ("/api/v1/vms/web", "timeout=5"),
    ("/api/v1/vms/web", "project=a&project=b"),  # repeated
    ("/api/v1/vms/web", "project=" + "p" * 64),  # too long: FastAPI answers 422
    ("/api/v1/vms/web/", ""),  # a trailing slash
    ("/api/v1/vms/web/stats", ""),
    ("/api/v1/vms/", ""),
    ("/api/v1/vmsx", ""),
    ("/api/v1/vms", "limit=0"),
    ("/api/v1/vms", "limit=1001"),
    ("/api/v1/vms", "limit=ten"),
    ("/api/v1/vms", "limit=%C2%B2"),  # a digit to str.isdigit, not to pydantic
    ("/api/v1/vms", "limit=+5"),
    ("/api/v1/vms", "offset=-1"),
    ("/api/v1/vms", "offset=2147483648"),
    ("/api/v1/vms", "after=Web:1"),
    ("/api/v1/vms", "after=web:1%0A"),  # '$' would let a trailing newline through
    ("/api/v1/vms", "all_projects=true"),
    ("/api/v1/vms", "limit=5&limit=6"),
    ("/api/v1/vms", "unknown=1"),
])
def test_anything_else_goes_on_to_the_fastapi_routes(path: str, query: str) -> None:
    assert taken(path, query) is None


@pytest.mark.parametrize("method", ["HEAD", "POST", "DELETE", "PUT"])
def test_only_get_is_taken(method: str) -> None:
    for path in ("/api/v1/vms", "/api/v1/vms/web"):
        assert routes()[0].matches(scope(path, method=method))[0] is Match.NONE
        assert routes()[1].matches(scope(path, method=method))[0] is Match.NONE


def test_websockets_and_a_root_path_are_left_alone() -> None:
    assert taken("/api/v1/vms/web", type="websocket") is None
    assert taken("/api/v1/vms/web", root_path="/proxy") is None
