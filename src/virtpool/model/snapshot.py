"""A VM's snapshot as the agent reports it and the API shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from virtpool.model.requests import REQUEST
from virtpool.model.spec import NAME_PATTERN, NAME_RULE


# How a clone's disk is made: "linked", a small qcow2 over a shared read-only base of the
# source's data; "full", an independent flat copy; "memory", a copy that keeps one memory
# snapshot, which the clone's first start resumes (vm create --from-snapshot).
CloneKind = Literal["linked", "full", "memory"]


class SnapshotInfo(BaseModel):
    """One snapshot inside a VM's disk: the disk, and with ``memory`` its running state too."""

    name: str
    memory: bool
    memory_bytes: int = 0
    created_at: datetime


class SnapshotRequest(BaseModel):
    model_config = REQUEST

    name: str = Field(pattern=f"^{NAME_PATTERN}$", description=NAME_RULE, examples=["before-upgrade"])
    memory: bool = Field(default=False, description="also save the running guest's memory "
                         "(a running VM only); restoring it brings the guest back as it ran")


class CloneRequest(BaseModel):
    model_config = REQUEST

    name: str = Field(pattern=f"^{NAME_PATTERN}$", description=f"the new VM: {NAME_RULE}")
    snapshot: str | None = Field(default=None, pattern=f"^{NAME_PATTERN}$",
                                 description="copy this snapshot of the VM (else its stopped disk)")
    full: bool = Field(default=False, description="an independent full copy (default: a linked "
                       "clone, copy-on-write over a shared base of the source's data)")
    memory: bool = Field(default=False, description="start from the memory snapshot `snapshot`: "
                         "the clone's first start resumes the guest as it ran (instant start)")
