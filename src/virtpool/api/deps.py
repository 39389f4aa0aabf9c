"""Request dependencies: the pool, and the caller's identity (every route needs a token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from virtpool.control.auth import Principal
from virtpool.control.pool import Pool
from virtpool.model.errors import Forbidden


def get_pool(request: Request) -> Pool:
    return request.app.state.pool


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def principal(request: Request, pool: Annotated[Pool, Depends(get_pool)]) -> Principal:
    caller = pool.tokens.authenticate(bearer(request))
    request.state.actor = caller.name  # for the audit log
    return caller


def admin(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    if caller.role != "admin":
        raise Forbidden(f"token '{caller.name}' is a {caller.role}; this needs an admin token")
    return caller


PoolDep = Annotated[Pool, Depends(get_pool)]
Caller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
