"""The event log: what the pool did and why."""

from typing import Annotated

from fastapi import APIRouter, Query

from virtpool.api.deps import PoolDep, ProjectFilter
from virtpool.model.event import Event

router = APIRouter(tags=["events"])


@router.get("/events", response_model=list[Event],
            summary="Events after id AFTER, oldest first; poll with the last id seen to follow")
def list_events(
    pool: PoolDep, project: ProjectFilter,
    after: Annotated[int, Query(ge=0)] = 0,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    vm: Annotated[str | None, Query(max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Event]:
    return pool.events.list(after=after, kind=kind, vm=vm, limit=limit, project_id=project)
