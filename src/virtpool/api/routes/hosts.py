"""The pool's host inventory: allocation per host, ratios, labels, states; inventory rows."""

from __future__ import annotations

from collections.abc import Sequence

from datetime import datetime

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field

from virtpool.api.deps import Admin, Caller, PoolDep
from virtpool.control.auth import Principal
from virtpool.control.enrolment import MAX_TOKEN_S
from virtpool.model.inventory import (
    HostAdd,
    HostView,
    LabelsUpdate,
    RatiosUpdate,
    StateUpdate,
)
from virtpool.model.requests import REQUEST

router = APIRouter(prefix="/hosts", tags=["hosts"])


@router.get("", response_model=list[HostView], summary="Every host with allocated/total per resource")
def list_hosts(pool: PoolDep, caller: Caller) -> Sequence[HostView]:
    return pool.hosts.list(_viewing_project(caller))


@router.get("/{name}", response_model=HostView)
def show_host(name: str, pool: PoolDep, caller: Caller) -> HostView:
    return pool.hosts.get(name, _viewing_project(caller))


def _viewing_project(caller: Principal) -> str | None:
    """None for a pool admin (the whole inventory); else the caller's project, so that the
    view names no other project and counts only the caller's VMs."""
    return None if caller.pool_admin else caller.project_id


class JoinTokenRequest(BaseModel):
    model_config = REQUEST

    expires_s: float = Field(default=3600.0, gt=0, le=MAX_TOKEN_S,
                             description="seconds until the token expires (at most a week)")


class JoinTokenIssued(BaseModel):
    """A one-time token for `virtpool agent --server JOIN_URL --join TOKEN`; shown only now."""

    token: str
    expires_at: datetime
    join_url: str | None


@router.post("/join-tokens", response_model=JoinTokenIssued, status_code=status.HTTP_201_CREATED,
             summary="A one-time, expiring token for an agent to join the pool with")
def join_token(body: JoinTokenRequest, pool: PoolDep, caller: Admin) -> JoinTokenIssued:
    issued = pool.enrolment.issue_token(body.expires_s, caller.name)
    return JoinTokenIssued(token=issued.token, expires_at=issued.expires_at, join_url=pool.join_url)


@router.post("", response_model=HostView, status_code=status.HTTP_201_CREATED,
             summary="Add an inventory row for a host whose agent is not connected yet")
def add_host(body: HostAdd, pool: PoolDep, _: Admin) -> HostView:
    return pool.hosts.add(body)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Remove a host that holds no VM")
def remove_host(name: str, pool: PoolDep, _: Admin) -> Response:
    pool.remove_host(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/{name}/ratios", response_model=HostView,
            summary="Change allocation ratios (never below what the host's VMs hold)")
def set_ratios(name: str, body: RatiosUpdate, pool: PoolDep, _: Admin) -> HostView:
    return pool.hosts.set_ratios(name, body)


@router.put("/{name}/labels", response_model=HostView, summary="Set and remove labels")
def set_labels(name: str, body: LabelsUpdate, pool: PoolDep, _: Admin) -> HostView:
    return pool.hosts.label(name, body)


@router.put("/{name}/state", response_model=HostView,
            summary="up takes new VMs; draining, maintenance and down take none")
def set_state(name: str, body: StateUpdate, pool: PoolDep, _: Admin) -> HostView:
    return pool.hosts.set_state(name, body.state)
