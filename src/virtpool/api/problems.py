"""Errors as RFC 9457 problem+json: every refusal has a status, a title, a detail that says
what went wrong and, where virtpool knows one, a hint that says what to do."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from virtpool.model.errors import RateLimited, Unauthorized, VirtpoolError

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """An error as RFC 9457 problem+json, as every refusal of the API answers."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    status: int
    title: str
    detail: str
    hint: str | None = None
    error: str | None = None  # virtpool's name for it, e.g. "StateError"
    errors: list[FieldError] | None = None  # what was wrong with which field (422)


def document(app: FastAPI) -> None:
    """Publish the errors as they are sent: problem+json for 422 and any other error status."""
    generate = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (FieldError, Problem):
            components[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        content = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = {"description": "invalid request", "content": content}
                responses["default"] = {"description": "refused or failed: a problem", "content": content}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def problem(status: int, title: str, detail: str, hint: str | None = None, **extra: object) -> JSONResponse:
    body: dict[str, object] = {"type": "about:blank", "status": status, "title": title, "detail": detail}
    if hint:
        body["hint"] = hint
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def error_problem(err: VirtpoolError) -> JSONResponse:
    """The problem+json answer for one of virtpool's errors."""
    if isinstance(err, RateLimited):
        response = problem(err.status, err.title, err.message, err.hint, error=type(err).__name__,
                           retry_after=err.retry_after)
        response.headers["Retry-After"] = str(err.retry_after)
        return response
    return problem(err.status, err.title, err.message, err.hint, error=type(err).__name__)


def _message(error: Mapping[str, Any]) -> str:
    """Pydantic's message; for a value of the wrong JSON type, with the value as it was sent
    ('Input should be a valid integer, not "2"'), so that the caller sees what to change."""
    message = str(error.get("msg", ""))
    value = error.get("input")
    if str(error.get("type", "")).endswith("_type") and isinstance(value, str | int | float | bool):
        shown = json.dumps(value)
        if len(shown) <= 40:
            message += f", not {shown}"
    return message


def install(app: FastAPI) -> None:
    @app.exception_handler(VirtpoolError)
    async def _virtpool(_: Request, err: VirtpoolError) -> JSONResponse:
        return error_problem(err)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": _message(e)}
            for e in err.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
        return problem(422, "invalid request", detail, errors=errors, error="InvalidRequest")

    @app.exception_handler(DataError)
    async def _data(_: Request, err: DataError) -> JSONResponse:
        # A value no column can hold (a NUL character for PostgreSQL, say) cannot name anything.
        return problem(422, "invalid request", f"a value in the request cannot be stored or looked up: {err.orig}",
                       "remove control characters such as NUL from names and filters", error="InvalidRequest")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        try:
            title = HTTPStatus(err.status_code).phrase.lower()
        except ValueError:
            title = "error"
        hint = "send less; large files go through image import" if err.status_code == 413 else None
        return problem(err.status_code, title, str(err.detail), hint)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(_: Request, err: DBAPIError) -> JSONResponse:
        # The driver's message names the database host and user: for the log, not the caller.
        log.error("database error: %s", err)
        return problem(503, "database unavailable", "the database did not answer this request",
                       "try again shortly; if it persists, the operator should check the database")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem(500, "internal error", f"virtpool failed unexpectedly: {err!r}",
                       "this is a bug in virtpool; the server log has the details")


__all__ = ["Problem", "Unauthorized", "document", "error_problem", "install", "problem"]
