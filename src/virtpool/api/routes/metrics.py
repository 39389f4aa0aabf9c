"""/metrics in Prometheus text format, for a metrics token or any token that may read.

Outside /api/v1 where scrapers look for it; authenticated like the rest of the API (bearer
token: Prometheus's ``authorization.credentials_file``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from virtpool.api.auth_limit import client_address
from virtpool.api.deps import PoolDep, bearer
from virtpool.model.errors import Forbidden
from virtpool.model.roles import may_scrape

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
            summary="Prometheus metrics: hosts, VMs, VM counts, the control plane")
def metrics(request: Request, pool: PoolDep) -> Response:
    # Through the failed-authentication limiter, as every other route's token.
    caller = request.app.state.auth_limiter.authenticate(pool.tokens, bearer(request), client_address(request))
    if not may_scrape(caller.role):
        raise Forbidden(f"token '{caller.name}' may not read metrics",
                        hint="use a metrics token (`virtpool token create --role metrics`) or a viewer's")
    # A project's token sees its own project's VMs; pool-wide tokens the whole pool.
    return Response(pool.scrape(caller.project_id).render(), media_type=CONTENT_TYPE_LATEST)
