"""Operations: follow a long action (VM create and boot, start, stop, restart, image build)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse

from virtpool.api.app_prefix import API_PREFIX
from virtpool.api.deps import Caller, PoolDep, ProjectFilter
from virtpool.api.long_poll import waiting
from virtpool.model.operation import Operation, OperationStatus

router = APIRouter(prefix="/operations", tags=["operations"])

MAX_WAIT_S = 300.0  # one long poll; clients wanting longer ask again
ACCEPTED = {202: {"model": Operation, "description": "accepted: follow the operation at Location",
                  "headers": {"Location": {"schema": {"type": "string"}}}}}


def accepted(op: Operation) -> JSONResponse:
    """202 with the operation as the body and its address in Location."""
    return JSONResponse(op.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"{API_PREFIX}/operations/{op.id}"})


@router.get("", response_model=list[Operation], summary="Recent operations, newest first")
def list_operations(
    pool: PoolDep, project: ProjectFilter,
    status_: Annotated[OperationStatus | None, Query(alias="status")] = None,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    target: Annotated[str | None, Query(max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[Operation]:
    return pool.operations.list(project_id=project, status=status_, kind=kind, target=target, limit=limit)


@router.get("/{op_id}", response_model=Operation,
            summary="An operation; with wait, answers once it finished or moved on (or at timeout)")
def show_operation(
    op_id: str, pool: PoolDep, caller: Caller,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to hold the answer")] = 0,
) -> Operation:
    # A project token sees its own project's operations only; others' do not exist for it.
    scope = caller.project_id
    op = pool.operations.get(op_id, project_id=scope)
    if wait <= 0:
        return op
    with waiting(wait) as allowed:
        return pool.operations.wait(op.id, allowed, project_id=scope)
