"""A VM as the pool records it and the API shows it."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from virtpool.model.spec import PortForward
from virtpool.model.states import VMState


class VMInfo(BaseModel):
    id: str
    name: str
    image: str
    cpus: int
    memory_mib: int
    disk_mib: int
    ports: list[PortForward]
    kernel_args: str
    accel: str
    state: VMState
    error: str | None
    host: str
    created_at: datetime
    updated_at: datetime
