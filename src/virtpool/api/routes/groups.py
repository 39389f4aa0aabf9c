"""Placement groups of the caller's project."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Response, status

from virtpool.api.deps import Caller, PoolDep
from virtpool.control.store.tables import DEFAULT_PROJECT
from virtpool.model.inventory import GroupSpec, GroupView

router = APIRouter(prefix="/groups", tags=["groups"])

# Projects arrive with the tenancy work; until then every caller acts in the default one.
PROJECT = DEFAULT_PROJECT


@router.get("", response_model=list[GroupView])
def list_groups(pool: PoolDep, _: Caller) -> Sequence[GroupView]:
    return pool.groups.list(PROJECT)


@router.post("", response_model=GroupView, status_code=status.HTTP_201_CREATED)
def create_group(body: GroupSpec, pool: PoolDep, _: Caller) -> GroupView:
    return pool.groups.create(PROJECT, body)


@router.get("/{name}", response_model=GroupView)
def show_group(name: str, pool: PoolDep, _: Caller) -> GroupView:
    return pool.groups.get(PROJECT, name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete a group; refused while it has VMs")
def delete_group(name: str, pool: PoolDep, _: Caller) -> Response:
    pool.groups.delete(PROJECT, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
