"""Audit every mutating API request: who, what, on which target, and how it ended.

The request body is never recorded (it may carry secrets); the token only as its name.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from virtpool.api.app_prefix import API_PREFIX
from virtpool.control.audit import AuditLog

logger = logging.getLogger(__name__)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNAUTHENTICATED = frozenset({401, 429})


def install(app: FastAPI, log: AuditLog) -> None:
    @app.middleware("http")
    async def _audit(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        # Refused authentications are counted per address and window (api/auth_limit.py), not
        # a row per attempt: a flood must not flood the log.
        if (request.method in MUTATING and request.url.path.startswith(API_PREFIX)
                and response.status_code not in UNAUTHENTICATED):
            route = request.scope.get("route")
            template = getattr(route, "path", request.url.path).removeprefix(API_PREFIX)
            target = getattr(request.state, "audit_target", None) or (
                request.path_params.get("name") if request.path_params else None)
            actor = getattr(request.state, "actor", "anonymous")
            project = getattr(request.state, "project", None)
            try:
                await run_in_threadpool(log.record, actor, f"{request.method} {template}", target,
                                        str(response.status_code), project_id=project)
            except Exception:  # the change is done: a failed audit write must not report it failed
                logger.exception("could not write the audit entry for %s %s", request.method, template)
        return response
