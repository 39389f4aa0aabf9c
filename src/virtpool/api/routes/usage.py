"""What the dashboard reads beyond the records: usage history for its graphs, what each host's
VMs use now, VM counts by state, and where the newest events start."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from virtpool.api.deps import Caller, PoolDep, ProjectFilter, Reader
from virtpool.model.usage import HostUse, UsageHistory

router = APIRouter(tags=["usage"])


@router.get("/vms/{name}/history", response_model=UsageHistory,
            summary="The VM's CPU, memory, disk and network rates over the last hour, oldest first")
def vm_history(
    name: str, pool: PoolDep, scope: Reader,
    since: Annotated[float, Query(ge=0, description="only points after this time (epoch seconds)")] = 0,
) -> UsageHistory:
    return pool.usage.history(pool.vms.get(name, scope.project), since)


@router.get("/pool/host-use", response_model=list[HostUse],
            summary="What each host's running VMs use now (a project token: its own VMs only)")
def host_use(pool: PoolDep, caller: Caller) -> list[HostUse]:
    return pool.usage.host_use(None if caller.pool_admin else caller.project_id)


@router.get("/pool/vm-counts", response_model=dict[str, int],
            summary="VMs by state, in the project asked for (pool admins: every project by default)")
def vm_counts(pool: PoolDep, project: ProjectFilter) -> dict[str, int]:
    counts: dict[str, int] = {}
    for (_, state), n in pool.summary.vms_by_state(project).items():
        counts[state] = counts.get(state, 0) + n
    return counts


class EventCursor(BaseModel):
    id: int


@router.get("/pool/latest-event", response_model=EventCursor,
            summary="The event id to follow the stream from so that it starts with the last BACK events")
def latest_event(pool: PoolDep, project: ProjectFilter,
                 back: Annotated[int, Query(ge=0, le=10_000)] = 0) -> EventCursor:
    return EventCursor(id=pool.summary.event_cursor(back, project))
