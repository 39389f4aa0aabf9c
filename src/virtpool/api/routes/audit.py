"""The audit log: a project's entries for its tokens (every role); all of it for pool admins."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from virtpool.api.deps import PoolDep, ProjectFilter
from virtpool.model.audit import AuditEntry

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=list[AuditEntry], summary="Mutating requests and automatic decisions")
def list_audit(
    pool: PoolDep, project: ProjectFilter,
    since: datetime | None = None,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntry]:
    return pool.audit.list(since=since, after=after, limit=limit, project_id=project)
