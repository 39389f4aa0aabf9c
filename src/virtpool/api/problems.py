"""Errors as RFC 9457 problem+json: every refusal has a status, a title, a detail that says
what went wrong and, where virtpool knows one, a hint that says what to do."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from virtpool.model.errors import Unauthorized, VirtpoolError

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


def problem(status: int, title: str, detail: str, hint: str | None = None, **extra: object) -> JSONResponse:
    body: dict[str, object] = {"type": "about:blank", "status": status, "title": title, "detail": detail}
    if hint:
        body["hint"] = hint
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(VirtpoolError)
    async def _virtpool(_: Request, err: VirtpoolError) -> JSONResponse:
        return problem(err.status, err.title, err.message, err.hint, error=type(err).__name__)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg", "")}
            for e in err.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
        return problem(422, "invalid request", detail, errors=errors, error="InvalidRequest")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        try:
            title = HTTPStatus(err.status_code).phrase.lower()
        except ValueError:
            title = "error"
        hint = "send less; large files go through image import" if err.status_code == 413 else None
        return problem(err.status_code, title, str(err.detail), hint)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem(500, "internal error", f"virtpool failed unexpectedly: {err!r}",
                       "this is a bug in virtpool; the server log has the details")


__all__ = ["Unauthorized", "install", "problem"]
