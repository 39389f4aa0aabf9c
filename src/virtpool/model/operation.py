"""A long action (create and boot a VM, stop, restart, build an image) that a client follows."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

OperationStatus = Literal["pending", "running", "succeeded", "failed"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed"})


class Operation(BaseModel):
    id: str
    kind: str = Field(description="vm.create, vm.start, vm.stop, vm.restart, image.build")
    target: str | None = Field(description="what it acts on: a VM or image name")
    project: str | None = Field(description="the project it belongs to (None: pool-wide)")
    actor: str = Field(description="the token that asked for it")
    status: OperationStatus
    progress: int = Field(ge=0, le=100)
    message: str | None = Field(description="what it is doing now")
    error: str | None = Field(description="why it failed")
    result: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime

    @property
    def done(self) -> bool:
        return self.status in FINISHED
