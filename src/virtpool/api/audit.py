"""Audit every mutating API request: who, what, on which target, and how it ended.

The request body is never recorded (it may carry secrets); the token only as its name. The
entry is committed before the answer's first byte leaves (the status line is held back until
then), so a client that saw its change answered can always find it in the log.

A pure ASGI middleware, not Starlette's ``@app.middleware("http")``: that one wraps every
request, reads included, in a second task and memory streams (a measurable share of a fast
GET), and turns a client or server that goes away mid-stream into "No response returned"
errors. Reads pass straight through here.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from virtpool.api.app_prefix import API_PREFIX
from virtpool.control.audit import AuditLog

logger = logging.getLogger(__name__)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNAUTHENTICATED = frozenset({401, 429})


class Audit:
    """Records one audit entry per mutating request under /api/v1, before it is answered."""

    def __init__(self, app: ASGIApp, log: AuditLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return

        async def audited_send(message: Message) -> None:
            # Refused authentications are counted per address and window (api/auth_limit.py),
            # not a row per attempt: a flood must not flood the log.
            if message["type"] == "http.response.start" and message["status"] not in UNAUTHENTICATED:
                await self._record(scope, message["status"])
            await send(message)

        await self.app(scope, receive, audited_send)

    async def _record(self, scope: Scope, status: int) -> None:
        # The router wrote the matched route and path parameters into this same scope, and the
        # request's dependencies the caller (request.state is scope["state"]).
        state: dict[str, Any] = scope.get("state") or {}
        route = scope.get("route")
        template = getattr(route, "path", scope["path"]).removeprefix(API_PREFIX)
        target = state.get("audit_target") or (scope.get("path_params") or {}).get("name")
        try:
            await run_in_threadpool(self.log.record, state.get("actor", "anonymous"),
                                    f"{scope['method']} {template}", target, str(status),
                                    project_id=state.get("project"))
        except Exception:  # the change is done: a failed audit write must not report it failed
            logger.exception("could not write the audit entry for %s %s", scope["method"], template)


def install(app: Any, log: AuditLog) -> None:
    app.add_middleware(Audit, log=log)
