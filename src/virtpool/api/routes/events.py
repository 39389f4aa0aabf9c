"""The event log: what the pool did and why, as a page to poll or a server-sent event stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from virtpool.api.access_guard import AccessGuard
from virtpool.api.deps import Caller, PoolDep, ProjectFilter, bearer, resolve_project
from virtpool.api.paging import MAX_ID
from virtpool.control.auth import Principal
from virtpool.control.pool import Pool
from virtpool.model.event import Event

router = APIRouter(tags=["events"])

HEARTBEAT_S = 15.0
# Events written by another process sharing the database are not announced here: look anyway
# this often.
RECHECK_S = 5.0
BATCH = 500

Kind = Annotated[str | None, Query(max_length=32, description="prefix, e.g. vm.state")]
VMName = Annotated[str | None, Query(max_length=63)]


@router.get("/events", response_model=list[Event],
            summary="Events after id AFTER, oldest first; poll with the last id seen to follow")
def list_events(
    pool: PoolDep, project: ProjectFilter,
    after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    kind: Kind = None,
    vm: VMName = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Event]:
    return pool.events.list(after=after, kind=kind, vm=vm, project_id=project, limit=limit)


@router.get("/events/stream", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "one SSE message per event: id, event = kind, data = the event"}},
            summary="Events as server-sent events; resumes after Last-Event-ID (or AFTER)")
def stream_events(
    request: Request, pool: PoolDep, caller: Caller, project: ProjectFilter,
    after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    kind: Kind = None,
    vm: VMName = None,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_ID, description="the last id received")] = None,
) -> EventSourceResponse:
    start = last_event_id if last_event_id is not None else after
    return EventSourceResponse(_follow(pool, caller, bearer(request), start, kind, vm, project),
                               ping=HEARTBEAT_S)


def _matches(event: Event, kind: str | None, vm: str | None, project: str | None) -> bool:
    return ((kind is None or event.kind.startswith(kind)) and (vm is None or event.vm == vm)
            and (project is None or event.project == project))


async def _follow(pool: Pool, caller: Principal, secret: str | None, after: int, kind: str | None,
                  vm: str | None, project: str | None) -> AsyncIterator[ServerSentEvent]:
    """Replay from the database, then send each new event as the log announces it.

    The stream ends within ``access_guard.RECHECK_S`` of its token expiring or being revoked
    elsewhere (or its project being deleted), at once when this server revokes it.
    """
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def announce(event: Event) -> None:
        if _matches(event, kind, vm, project):
            loop.call_soon_threadsafe(wake.set)

    def still_allowed() -> None:
        again = pool.tokens.authenticate(secret)
        if project is not None:
            resolve_project(pool, again, project)

    guard = AccessGuard(pool.tokens, caller.token_id, still_allowed)
    watcher = asyncio.create_task(guard.watch())
    remove = pool.events.listen(announce)
    try:
        while not guard.lost:
            # Cleared before reading: an event committed after the read sets it again.
            wake.clear()
            batch = await asyncio.to_thread(pool.events.list, after=after, kind=kind, vm=vm,
                                            project_id=project, limit=BATCH)
            for event in batch:
                if guard.lost:
                    break
                yield ServerSentEvent(event.model_dump_json(), id=str(event.id), event=event.kind)
                after = event.id
            if len(batch) == BATCH:
                continue
            woken = asyncio.create_task(wake.wait())
            await asyncio.wait([watcher, woken], timeout=RECHECK_S, return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
        # Said in the stream, so that a client tells "refused" (exit 1) from "server gone" (3).
        yield ServerSentEvent(json.dumps({"status": 401, "title": "unauthorized",
                                          "detail": f"the event stream ended: {guard.reason}",
                                          "hint": "use a valid token", "error": "Unauthorized"}),
                              event="problem")
    finally:
        watcher.cancel()
        remove()
