"""Times every API request into the control plane's histogram (pure ASGI: no body buffering).

Event streams and websockets are left out: they last as long as the client stays, which says
nothing about how fast the API answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from virtpool.api.app_prefix import API_PREFIX


class RequestTimer:
    def __init__(self, app: ASGIApp, observe: Callable[[float], None]) -> None:
        self._app = app
        self._observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(API_PREFIX) or path.endswith("/stream"):
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self._app(scope, receive, send)
        finally:
            self._observe(time.perf_counter() - started)
