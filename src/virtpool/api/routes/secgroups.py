"""Security groups of the project a request acts in, and their rules."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request, Response, status

from virtpool.api.deps import Operator, PoolDep, Reader
from virtpool.model.secgroup import RuleSpec, RuleView, SecGroupSpec, SecGroupView

router = APIRouter(prefix="/secgroups", tags=["secgroups"])


@router.get("", response_model=list[SecGroupView])
def list_secgroups(pool: PoolDep, scope: Reader) -> Sequence[SecGroupView]:
    return pool.secgroups.list(scope.project)


@router.post("", response_model=SecGroupView, status_code=status.HTTP_201_CREATED,
             summary="Create a security group (no rules yet: its VMs take ingress from nowhere)")
def create_secgroup(body: SecGroupSpec, request: Request, pool: PoolDep,
                    scope: Operator) -> SecGroupView:
    request.state.audit_target = body.name
    return pool.secgroups.create(scope.project, body)


@router.get("/{name}", response_model=SecGroupView)
def show_secgroup(name: str, pool: PoolDep, scope: Reader) -> SecGroupView:
    return pool.secgroups.get(scope.project, name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete a security group; refused while VMs are in it or rules name it")
def delete_secgroup(name: str, pool: PoolDep, scope: Operator) -> Response:
    pool.secgroups.delete(scope.project, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/rules", response_model=RuleView, status_code=status.HTTP_201_CREATED,
             summary="Add an allow rule; running VMs in the group get it at once")
def add_secgroup_rule(name: str, body: RuleSpec, request: Request, pool: PoolDep,
                      scope: Operator) -> RuleView:
    request.state.audit_target = name
    return pool.secgroups.add_rule(scope.project, name, body)


@router.delete("/{name}/rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Remove a rule; running VMs in the group lose it at once")
def remove_secgroup_rule(name: str, rule_id: str, request: Request, pool: PoolDep,
                         scope: Operator) -> Response:
    request.state.audit_target = name
    pool.secgroups.remove_rule(scope.project, name, rule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
