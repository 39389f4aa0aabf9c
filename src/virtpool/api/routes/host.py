"""The host's inventory."""

from fastapi import APIRouter

from virtpool.api.deps import Caller, PoolDep
from virtpool.model.spec import HostInfo

router = APIRouter(tags=["host"])


@router.get("/host", response_model=HostInfo, summary="This host's CPUs, memory, disk and accelerator")
def show_host(pool: PoolDep, _: Caller) -> HostInfo:
    return pool.agent.host_info()
