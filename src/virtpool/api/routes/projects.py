"""Projects and their quotas. Pool admins manage them; a project's tokens may read their own."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, Field

from virtpool.api.deps import Admin, Caller, PoolDep, resolve_project
from virtpool.control.auth import Principal
from virtpool.control.pool import Pool
from virtpool.model.project import (
    MAX_COUNT_QUOTA,
    MAX_QUOTA,
    ProjectCreate,
    ProjectInfo,
    QuotaResult,
)
from virtpool.model.requests import REQUEST
from virtpool.model.roles import Access, check_access, check_pool_admin

router = APIRouter(prefix="/projects", tags=["projects"])

Limit = int | None


class QuotaUpdate(BaseModel):
    """The quotas to change; a field left out stays as it is, ``null`` makes it unlimited."""

    model_config = REQUEST

    cpus: Limit = Field(default=None, ge=0, le=MAX_COUNT_QUOTA)
    memory_mib: Limit = Field(default=None, ge=0, le=MAX_QUOTA)
    disk_mib: Limit = Field(default=None, ge=0, le=MAX_QUOTA)
    vms: Limit = Field(default=None, ge=0, le=MAX_COUNT_QUOTA)


def _project(request: Request, pool: Pool, caller: Principal, name: str, *, pool_only: bool) -> str:
    # Another project is "not found" before any role is looked at, so that names do not leak.
    project = resolve_project(pool, caller, name)
    request.state.project = project
    if pool_only:
        check_pool_admin(caller.name, caller.role, caller.project_id)
    else:
        check_access(caller.name, caller.role, caller.project_id, Access.READ)
    return project


@router.get("", response_model=list[ProjectInfo], summary="Projects with quota and usage")
def list_projects(pool: PoolDep, caller: Caller) -> list[ProjectInfo]:
    return pool.projects.list(only=caller.project_id)


@router.post("", response_model=ProjectInfo, status_code=status.HTTP_201_CREATED)
def create_project(body: ProjectCreate, request: Request, pool: PoolDep, _: Admin) -> ProjectInfo:
    request.state.audit_target = request.state.project = body.name
    return pool.projects.create(body.name, body.quota)


@router.get("/{name}", response_model=ProjectInfo)
def show_project(name: str, request: Request, pool: PoolDep, caller: Caller) -> ProjectInfo:
    return pool.projects.get(_project(request, pool, caller, name, pool_only=False))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete an empty project and its tokens (refused while it has VMs)")
def delete_project(name: str, request: Request, pool: PoolDep, caller: Caller) -> Response:
    pool.projects.delete(_project(request, pool, caller, name, pool_only=True))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/{name}/quota", response_model=QuotaResult,
            summary="Change quotas; below current usage is allowed and blocks growth only")
def set_quota(name: str, body: QuotaUpdate, request: Request, pool: PoolDep, caller: Caller) -> QuotaResult:
    project = _project(request, pool, caller, name, pool_only=True)
    return pool.projects.set_quota(project, body.model_dump(include=body.model_fields_set))
