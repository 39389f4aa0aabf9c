"""The two hottest reads, ``GET /api/v1/vms/{name}`` and ``GET /api/v1/vms``, answered without
FastAPI's per-request machinery.

Profiled under 32 clients (py-spy, /work/notes/s6-api.md), a GET of one VM spent more time in
FastAPI's dependency solving, its route matching and its request handler than in the read
itself. These routes sit first in the router and take only the requests whose query string
they fully understand: no parameters but ``project`` (one VM), or ``limit``, ``offset``,
``after`` and ``project`` (a page), each once and valid. They run the very functions the
FastAPI routes run (api/deps.py's ``authenticate`` and ``acting_scope``, routes/vms.py's
``vm_answer`` and ``vm_page``), inside the same middleware and exception handlers, so every
answer, refusal included, is the one FastAPI would give. Any other request (``wait_for``, a
repeated or invalid parameter, HEAD, a trailing slash) falls through to the FastAPI routes,
which also stay the OpenAPI document's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from virtpool.api.app_prefix import API_PREFIX
from virtpool.api.deps import acting_scope, authenticate
from virtpool.api.paging import MAX_ID
from virtpool.api.read_threads import in_read_thread
from virtpool.api.routes.vms import CURSOR, vm_answer, vm_page
from virtpool.model.roles import Access

VMS = f"{API_PREFIX}/vms"
PROJECT_MAX = 63  # deps.ProjectParam's max_length
LIMIT_MAX = 1000  # routes/vms.py's list_vms: 1 <= limit <= 1000
_DIGITS = re.compile(r"[0-9]{1,10}")
_CURSOR = re.compile(CURSOR)
_PARAMS = "virtpool.fast_params"  # the scope key carrying what matches() parsed


def _query(scope: Scope, allowed: frozenset[str]) -> dict[str, str] | None:
    """The query parameters as Starlette reads them, or None unless each is in ``allowed``
    and given once."""
    pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    params = dict(pairs)
    if len(params) != len(pairs) or not params.keys() <= allowed:
        return None
    return params


def _project(params: dict[str, str]) -> tuple[bool, str | None]:
    project = params.get("project")
    return project is None or len(project) <= PROJECT_MAX, project


def one_vm(scope: Scope) -> dict[str, Any] | None:
    """What ``GET /vms/{name}`` asks, or None when the FastAPI route must answer."""
    path = scope["path"]
    prefix = VMS + "/"
    name = path[len(prefix):]
    if not path.startswith(prefix) or not name or "/" in name:
        return None
    params = _query(scope, frozenset({"project"}))
    if params is None:
        return None
    valid, project = _project(params)
    return {"name": name, "project": project} if valid else None


def vm_list(scope: Scope) -> dict[str, Any] | None:
    """What ``GET /vms`` asks, or None when the FastAPI route must answer."""
    if scope["path"] != VMS:
        return None
    params = _query(scope, frozenset({"project", "limit", "offset", "after"}))
    if params is None:
        return None
    valid, project = _project(params)
    limit, offset, after = params.get("limit", "100"), params.get("offset", "0"), params.get("after")
    if not (valid and _DIGITS.fullmatch(limit) and _DIGITS.fullmatch(offset)
            and (after is None or _CURSOR.fullmatch(after))):
        return None
    if not (1 <= int(limit) <= LIMIT_MAX and int(offset) <= MAX_ID):
        return None
    return {"project": project, "limit": int(limit), "offset": int(offset), "after": after}


class FastRead(BaseRoute):
    """A GET route that answers the requests ``parse`` understands and leaves the rest to the
    routes after it."""

    def __init__(self, path: str, parse: Callable[[Scope], dict[str, Any] | None],
                 answer: Callable[[Request, dict[str, Any]], Any]) -> None:
        self.path = self.path_format = path
        self._parse = parse
        self._answer = answer

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        # No root_path: the API is served at the root (as the FastAPI routes' paths assume).
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            return Match.NONE, {}
        params = self._parse(scope)
        if params is None:
            return Match.NONE, {}
        path_params = {"name": params["name"]} if "name" in params else {}
        return Match.FULL, {"path_params": path_params, _PARAMS: params}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)  # not a named route: url_for finds the FastAPI one

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self._answer(request, scope[_PARAMS])
        await response(scope, receive, send)


async def _one(request: Request, params: dict[str, Any]) -> Any:
    pool = request.app.state.pool
    caller = authenticate(request, pool)
    return await vm_answer(pool, acting_scope(request, pool, caller, params["project"], Access.READ),
                           params["name"])


async def _page(request: Request, params: dict[str, Any]) -> Any:
    pool = request.app.state.pool
    caller = authenticate(request, pool)
    scope = acting_scope(request, pool, caller, params["project"], Access.READ)
    # In a worker thread, as FastAPI runs the sync route: a page must not hold the event loop.
    return await in_read_thread(vm_page, request, pool, scope, params["limit"], params["offset"],
                                   params["after"], False)


def routes() -> list[BaseRoute]:
    """The fast routes, to go first in the application's router."""
    return [FastRead(VMS + "/{name}", one_vm, _one), FastRead(VMS, vm_list, _page)]
