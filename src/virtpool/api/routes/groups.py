"""Placement groups of the project a request acts in."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request, Response, status

from virtpool.api.deps import Operator, PoolDep, Reader
from virtpool.model.inventory import GroupSpec, GroupView

router = APIRouter(prefix="/groups", tags=["groups"])


@router.get("", response_model=list[GroupView])
def list_groups(pool: PoolDep, scope: Reader) -> Sequence[GroupView]:
    return pool.groups.list(scope.project)


@router.post("", response_model=GroupView, status_code=status.HTTP_201_CREATED)
def create_group(body: GroupSpec, request: Request, pool: PoolDep, scope: Operator) -> GroupView:
    request.state.audit_target = body.name
    return pool.groups.create(scope.project, body)


@router.get("/{name}", response_model=GroupView)
def show_group(name: str, pool: PoolDep, scope: Reader) -> GroupView:
    return pool.groups.get(scope.project, name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete a group; refused while it has VMs")
def delete_group(name: str, pool: PoolDep, scope: Operator) -> Response:
    pool.groups.delete(scope.project, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
