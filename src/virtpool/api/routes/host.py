"""The host's inventory."""

from fastapi import APIRouter

from virtpool.api.deps import Admin, Caller, PoolDep
from virtpool.control.balancer import MemoryPolicy, PolicyUpdate
from virtpool.model.spec import HostInfo
from virtpool.model.vm import VMStats

router = APIRouter(tags=["host"])


@router.get("/host", response_model=HostInfo, summary="This host's CPUs, memory, disk and accelerator")
def show_host(pool: PoolDep, _: Caller) -> HostInfo:
    return pool.agent.host_info()


@router.get("/host/top", response_model=list[VMStats], summary="Usage figures of every VM on this host")
def host_top(pool: PoolDep, caller: Caller) -> list[VMStats]:
    # A project token sees its own project's VMs here; a pool-wide one every VM.
    vms = pool.vms.list(limit=10_000, project_id=caller.project_id)
    return [pool.vms.stats(vm.id, tolerant=True) for vm in vms]


@router.get("/host/memory-policy", response_model=MemoryPolicy)
def show_memory_policy(pool: PoolDep, _: Caller) -> MemoryPolicy:
    return pool.balancer.policy


@router.put("/host/memory-policy", response_model=MemoryPolicy,
            summary="Change the memory budget or threshold the balancer works to")
def update_memory_policy(body: PolicyUpdate, pool: PoolDep, _: Admin) -> MemoryPolicy:
    return pool.balancer.update(body)
