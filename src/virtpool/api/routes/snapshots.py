"""A VM's snapshots (take, list, restore, delete) and clones of it or of a snapshot."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from virtpool.api.deps import Operator, PoolDep, Reader
from virtpool.model.snapshot import CloneRequest, SnapshotInfo, SnapshotRequest
from virtpool.model.spec import NAME_PATTERN
from virtpool.model.vm import VMInfo

router = APIRouter(prefix="/vms", tags=["snapshots"])
SnapshotName = Annotated[str, Path(pattern=f"^{NAME_PATTERN}$")]


@router.get("/{name}/snapshots", response_model=list[SnapshotInfo])
def list_snapshots(name: str, pool: PoolDep, scope: Reader) -> list[SnapshotInfo]:
    return pool.snapshots.list(name, scope.project)


@router.post("/{name}/snapshots", response_model=SnapshotInfo, status_code=status.HTTP_201_CREATED,
             summary="Snapshot the VM's disk (running or stopped); with memory, its running state too")
def create_snapshot(name: str, body: SnapshotRequest, pool: PoolDep, scope: Operator) -> SnapshotInfo:
    return pool.snapshots.create(name, body.name, memory=body.memory, project_id=scope.project)


@router.post("/{name}/snapshots/{snapshot}/restore", response_model=SnapshotInfo,
             summary="Put the VM back to a snapshot: stopped, or running for a memory snapshot")
def restore_snapshot(name: str, snapshot: SnapshotName, pool: PoolDep, scope: Operator) -> SnapshotInfo:
    return pool.snapshots.restore(name, snapshot, project_id=scope.project)


@router.post("/{name}/clone", response_model=VMInfo, status_code=status.HTTP_201_CREATED,
             summary="A new stopped VM made from this one's (stopped) disk or a snapshot: linked, "
                     "full, or started from a memory snapshot")
def clone_vm(name: str, body: CloneRequest, pool: PoolDep, scope: Operator) -> VMInfo:
    return pool.clones.clone(name, body.name, snapshot=body.snapshot, full=body.full, memory=body.memory,
                             project_id=scope.project)


@router.delete("/{name}/snapshots/{snapshot}", status_code=status.HTTP_204_NO_CONTENT)
def delete_snapshot(name: str, snapshot: SnapshotName, pool: PoolDep, scope: Operator) -> Response:
    pool.snapshots.delete(name, snapshot, project_id=scope.project)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
