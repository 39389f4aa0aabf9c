"""Who the caller is: the dashboard shows what the token's role allows and nothing more."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from virtpool.api.deps import Caller

router = APIRouter(tags=["tokens"])


class WhoAmI(BaseModel):
    name: str = Field(description="the token's name")
    role: str
    project: str | None = Field(description="the project it acts in; null: pool-wide")
    pool_admin: bool


@router.get("/whoami", response_model=WhoAmI, summary="The calling token's name, role and project")
def whoami(caller: Caller) -> WhoAmI:
    return WhoAmI(name=caller.name, role=caller.role, project=caller.project_id,
                  pool_admin=caller.pool_admin)
