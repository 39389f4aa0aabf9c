"""API tokens: create (the secret is shown once), list (never a secret), revoke.

Pool admins manage every token; a project admin its own project's. Members and viewers none.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request, status

from virtpool.api.deps import Caller, PoolDep, ProjectParam, resolve_project
from virtpool.model.roles import Access, check_access, check_pool_admin
from virtpool.model.token import TokenCreate, TokenCreated, TokenInfo

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.get("", response_model=list[TokenInfo], summary="Tokens (never their secrets)")
def list_tokens(pool: PoolDep, caller: Caller, project: ProjectParam = None) -> list[TokenInfo]:
    if caller.pool_admin and project is None:
        return pool.tokens.list()
    name = resolve_project(pool, caller, project)
    check_access(caller.name, caller.role, caller.project_id, Access.MANAGE)
    return pool.tokens.list(name)


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED,
             summary="A new token; its secret is in the answer and never again")
def create_token(body: TokenCreate, request: Request, pool: PoolDep, caller: Caller) -> TokenCreated:
    request.state.audit_target = body.name
    if body.pool_wide:
        check_pool_admin(caller.name, caller.role, caller.project_id)
        project = None
    else:
        project = resolve_project(pool, caller, body.project)
        request.state.project = project
        check_access(caller.name, caller.role, caller.project_id, Access.MANAGE)
    expires = datetime.now(UTC) + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    secret = pool.tokens.create(body.name, body.role, expires, project_id=project,
                                caller_project=caller.project_id)
    return TokenCreated(**pool.tokens.get(body.name).model_dump(), token=secret)


@router.delete("/{name}", response_model=TokenInfo, summary="Revoke a token (by name or id) at once")
def revoke_token(name: str, request: Request, pool: PoolDep, caller: Caller) -> TokenInfo:
    # Another project's token is "not found" before any role is looked at.
    token = pool.tokens.get(name, caller.project_id)
    request.state.project = token.project
    check_access(caller.name, caller.role, caller.project_id, Access.MANAGE)
    return pool.tokens.revoke(token.id)
