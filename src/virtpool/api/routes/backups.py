"""Backups of running VMs into a directory on their host, and restores of a chain as a new VM.

Pool admins only: a backup directory is a path on the host, written and read by the agent
(root), so choosing one is an operator's act, not a tenant's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from virtpool.api.deps import Admin, Operator, PoolDep
from virtpool.model.backup import BackupInfo, BackupRequest, RestoreBackupRequest
from virtpool.model.errors import Forbidden
from virtpool.model.vm import VMInfo

router = APIRouter(tags=["backups"])
ADMIN_ONLY = "backups name directories on the host; only a pool admin may choose them"


@router.post("/vms/{name}/backups", response_model=BackupInfo, status_code=status.HTTP_201_CREATED,
             summary="Back a running VM's disk up: full into an empty directory, or --incremental")
def backup_vm(name: str, body: BackupRequest, pool: PoolDep, scope: Operator) -> BackupInfo:
    if not scope.caller.pool_admin:
        raise Forbidden(ADMIN_ONLY, hint="ask a pool admin to take the backup")
    return pool.backups.backup(name, body.target, incremental=body.incremental, project_id=scope.project)


@router.get("/backups", response_model=BackupInfo, summary="The backup chain in a host directory")
def read_backup(pool: PoolDep, _: Admin,
                source: Annotated[str, Query(min_length=1, max_length=4096)],
                host: Annotated[str | None, Query(min_length=1, max_length=255,
                                                  description="the host whose directory it is")] = None,
                ) -> BackupInfo:
    return pool.backups.read(source, host=host)


@router.post("/backups/restore", response_model=VMInfo, status_code=status.HTTP_201_CREATED,
             summary="Make a new (stopped) VM whose disk is the newest state of a backup chain")
def restore_backup(body: RestoreBackupRequest, pool: PoolDep, scope: Operator) -> VMInfo:
    if not scope.caller.pool_admin:
        raise Forbidden(ADMIN_ONLY, hint="ask a pool admin to restore it")
    return pool.backups.restore(body.source, body.name, host=body.host, project_id=scope.project)
