"""A backup chain of one VM's disk: a full copy and the incrementals after it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from virtpool.model.requests import REQUEST
from virtpool.model.spec import NAME_PATTERN, NAME_RULE


class BackupFile(BaseModel):
    file: str  # inside the chain's directory
    kind: Literal["full", "incremental"]
    bitmap: str  # the VM disk's checkpoint (persistent dirty bitmap) this backup started
    bytes: int
    created_at: datetime


class BackupInfo(BaseModel):
    """What ``chain.json`` in a backup directory says: whose disk, and the files in order."""

    vm_id: str
    vm: str
    image: str
    disk_bytes: int
    files: list[BackupFile]


class BackupRequest(BaseModel):
    model_config = REQUEST

    target: str = Field(min_length=1, max_length=4096,
                        description="a directory on the VM's host: empty (or new) for a full "
                        "backup, holding this VM's chain for an incremental")
    incremental: bool = False


class RestoreBackupRequest(BaseModel):
    model_config = REQUEST

    source: str = Field(min_length=1, max_length=4096, description="a backup directory on the host")
    host: str | None = Field(default=None, min_length=1, max_length=255,
                             description="the host whose directory holds the chain, where the new VM "
                             "is made (default: the control plane's own host)")
    name: str = Field(pattern=f"^{NAME_PATTERN}$", description=f"the new VM: {NAME_RULE}")
