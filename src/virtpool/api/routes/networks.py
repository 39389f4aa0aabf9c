"""Virtual networks of the project a request acts in."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request, Response, status

from virtpool.api.deps import Operator, PoolDep, Reader
from virtpool.model.network import NetworkSpec, NetworkView

router = APIRouter(prefix="/networks", tags=["networks"])


@router.get("", response_model=list[NetworkView])
def list_networks(pool: PoolDep, scope: Reader) -> Sequence[NetworkView]:
    return pool.networks.list(scope.project)


@router.post("", response_model=NetworkView, status_code=status.HTTP_201_CREATED,
             summary="Create a network; a subnet overlapping another of the project is refused")
def create_network(body: NetworkSpec, request: Request, pool: PoolDep, scope: Operator) -> NetworkView:
    request.state.audit_target = body.name
    return pool.networks.create(scope.project, body)


@router.get("/{name}", response_model=NetworkView)
def show_network(name: str, pool: PoolDep, scope: Reader) -> NetworkView:
    return pool.networks.get(scope.project, name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete a network; refused while VMs are on it")
def delete_network(name: str, pool: PoolDep, scope: Operator) -> Response:
    pool.networks.delete(scope.project, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
