"""Request body size limits: a bounded body for every request, a larger one for image uploads.

A body announced as too large is refused before it is read; a small one of unknown length
(chunked) is read up to the limit first; an upload that grows past its limit is cut off there.
All answer 413 problem+json and change nothing. (Starlette's own body limit answers in plain text, so it is
not used.)
"""

from __future__ import annotations

import re

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from virtpool.api.app_prefix import API_PREFIX
from virtpool.api.auth_limit import client_address
from virtpool.api.deps import bearer
from virtpool.api.problems import error_problem, problem
from virtpool.model.errors import VirtpoolError
from virtpool.model.roles import check_pool_admin

# Exec's stdin (1 MiB, base64 in JSON) is the largest body a JSON request needs.
MAX_BODY_BYTES = 2 << 20
MAX_UPLOAD_BYTES = 64 << 30  # an image import: kernel, initramfs and root disk
UPLOADS = re.compile(rf"^{re.escape(API_PREFIX)}/images/?$")
HINT = "send less; large files go through image import (`virtpool image import`)"


def limit_for(method: str, path: str) -> int:
    return MAX_UPLOAD_BYTES if method == "POST" and UPLOADS.match(path) else MAX_BODY_BYTES


def _too_large(limit: int) -> str:
    return f"the request body is larger than this endpoint's limit of {limit} bytes"


class BodyLimit:
    """ASGI middleware enforcing :func:`limit_for` on every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(scope["method"], scope["path"])
        if limit == MAX_UPLOAD_BYTES:
            refusal = await _upload_refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            if declared.isdigit():
                response = problem(413, "payload too large", _too_large(limit), HINT)
            else:
                response = problem(400, "bad request", "Content-Length is not a number")
            await response(scope, receive, send)
            return
        if declared is None and limit == MAX_BODY_BYTES:
            # A small body of unknown length: read it here (up to the limit) and hand it on.
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    await problem(413, "payload too large", _too_large(limit), HINT)(scope, receive, send)
                    return
            await self.app(scope, _replay(bytes(body), receive), send)
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, bounded, send)


async def _upload_refusal(scope: Scope) -> JSONResponse | None:
    """Image uploads are for pool admins: anyone else is answered before a byte of the body
    (up to ``MAX_UPLOAD_BYTES``) is read, rather than after the route has parsed it all."""
    pool = scope["app"].state.pool
    request = Request(scope)
    try:
        caller = await run_in_threadpool(scope["app"].state.auth_limiter.authenticate, pool.tokens,
                                         bearer(request), client_address(request))
        check_pool_admin(caller.name, caller.role, caller.project_id)
    except VirtpoolError as err:
        return error_problem(err)
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives ``body`` once, then whatever the client sends next (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
