"""Pool-wide settings and rebalancing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from virtpool.api.deps import Admin, Caller, PoolDep
from virtpool.control.rebalancing import MAX_THRESHOLD_PP
from virtpool.control.scheduler import DEFAULT_THRESHOLD_PP
from virtpool.model.inventory import PoolSettings, RebalanceView
from virtpool.model.requests import REQUEST

router = APIRouter(prefix="/pool", tags=["pool"])

Threshold = Annotated[float, Field(ge=0, le=MAX_THRESHOLD_PP)]


class RebalanceRequest(BaseModel):
    model_config = REQUEST

    threshold_pp: Threshold = DEFAULT_THRESHOLD_PP
    consolidate: bool = False


@router.get("/settings", response_model=PoolSettings)
def show_settings(pool: PoolDep, _: Caller) -> PoolSettings:
    return pool.settings.get()


@router.put("/settings", response_model=PoolSettings, summary="Change pool-wide settings")
def update_settings(body: PoolSettings, pool: PoolDep, _: Admin) -> PoolSettings:
    return pool.settings.update(body)


@router.get("/rebalance", response_model=RebalanceView,
            summary="The plan of live migrations that would even out the hosts (a dry run); "
                    "admin only, as it names every project's VMs")
def plan_rebalance(
    pool: PoolDep, _: Admin,
    threshold_pp: Annotated[float, Query(ge=0, le=MAX_THRESHOLD_PP)] = DEFAULT_THRESHOLD_PP,
    consolidate: bool = False,
) -> RebalanceView:
    return pool.rebalancer.run(threshold_pp=threshold_pp, consolidate=consolidate, dry_run=True)


@router.post("/rebalance", response_model=RebalanceView,
             summary="Plan and apply (needs live migration, which is not available yet)")
def apply_rebalance(body: RebalanceRequest, pool: PoolDep, _: Admin) -> RebalanceView:
    return pool.rebalancer.run(threshold_pp=body.threshold_pp, consolidate=body.consolidate,
                               dry_run=False)
