"""Request dependencies: the pool, the caller's identity (every route needs a token), and the
project a request acts in with the access its route needs (see model/roles.py).

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread,
and the hand-offs of three or four of them per request were the largest share of a fast GET's
time (profiled with py-spy: /work/notes/cli-api.md). The token lookup they do is one indexed
primary-key-like query (well under a millisecond), cheaper than a thread hop; the endpoint
itself still runs in the thread pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request, WebSocket
from starlette.requests import HTTPConnection

from virtpool.api.auth_limit import FailedAuthLimiter, client_address
from virtpool.control.auth import Principal
from virtpool.control.pool import Pool
from virtpool.control.store.tables import DEFAULT_PROJECT
from virtpool.model.roles import (
    Access,
    check_access,
    check_not_metrics_only,
    check_pool_admin,
    not_found_project,
    project_in_scope,
)


async def get_pool(request: Request) -> Pool:
    return request.app.state.pool


def bearer(request: HTTPConnection) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


# A browser's WebSocket cannot send an Authorization header. The dashboard offers the token as a
# subprotocol instead ("bearer.<token>", next to CONSOLE_PROTOCOL, which the server picks), as
# Kubernetes does: the token travels in a header, never in the URL where logs would keep it.
BEARER_PROTOCOL_PREFIX = "bearer."
CONSOLE_PROTOCOL = "virtpool.console"


def offered_protocols(websocket: WebSocket) -> list[str]:
    return [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]


def websocket_bearer(websocket: WebSocket) -> str | None:
    """The token of a websocket: its Authorization header, else its bearer subprotocol."""
    header = bearer(websocket)  # type: ignore[arg-type]
    if header:
        return header
    return next((p.removeprefix(BEARER_PROTOCOL_PREFIX) for p in offered_protocols(websocket)
                 if p.startswith(BEARER_PROTOCOL_PREFIX)), None)


def authenticate(request: HTTPConnection, pool: Pool) -> Principal:
    """The caller of ``request`` by its bearer token (failures limited per address), noted in
    ``request.state`` for the audit log; a metrics-only token is refused."""
    limiter: FailedAuthLimiter = request.app.state.auth_limiter
    caller = limiter.authenticate(pool.tokens, bearer(request), client_address(request))
    request.state.actor = caller.name  # for the audit log
    request.state.project = caller.project_id
    check_not_metrics_only(caller.name, caller.role)
    return caller


async def principal(request: Request, pool: Annotated[Pool, Depends(get_pool)]) -> Principal:
    return authenticate(request, pool)


async def admin(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    """A pool-wide admin: the only caller that may change the pool itself."""
    check_pool_admin(caller.name, caller.role, caller.project_id)
    return caller


PoolDep = Annotated[Pool, Depends(get_pool)]
Caller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]

ProjectParam = Annotated[str | None, Query(
    max_length=63, description="the project to act in: a project token's own (the default for "
    "it); for a pool-wide token any project (default 'default')")]


@dataclass(frozen=True)
class Scope:
    """Who calls, and the one project the request acts in."""

    caller: Principal
    project: str


def resolve_project(pool: Pool, caller: Principal, asked: str | None) -> str:
    """The project ``caller`` acts in; another project's, or a missing one, is NotFound."""
    project = project_in_scope(caller.project_id, asked, DEFAULT_PROJECT)
    if caller.project_id is None and not pool.projects.exists(project):
        raise not_found_project(project)
    return project


def acting_scope(request: HTTPConnection, pool: Pool, caller: Principal, project: str | None,
                 needed: Access) -> Scope:
    """The project ``caller`` acts in (``project`` as asked), once it has the access ``needed``
    there; noted in ``request.state`` for the audit log."""
    # The project is checked before the role: another project is "not found" for everyone.
    name = resolve_project(pool, caller, project)
    check_access(caller.name, caller.role, caller.project_id, needed)
    request.state.project = name
    return Scope(caller, name)


def _scope(needed: Access) -> Callable[..., Awaitable[Scope]]:
    async def dependency(request: Request, pool: PoolDep, caller: Caller, project: ProjectParam = None) -> Scope:
        return acting_scope(request, pool, caller, project, needed)

    return dependency


async def _filter(pool: PoolDep, caller: Caller, project: ProjectParam = None) -> str | None:
    """For lists: the project to show, or None (every project) for a pool admin who named none."""
    if caller.project_id is None and project is None:
        return None
    name = resolve_project(pool, caller, project)
    check_access(caller.name, caller.role, caller.project_id, Access.READ)
    return name


Reader = Annotated[Scope, Depends(_scope(Access.READ))]
Operator = Annotated[Scope, Depends(_scope(Access.OPERATE))]
ProjectFilter = Annotated[str | None, Depends(_filter)]
