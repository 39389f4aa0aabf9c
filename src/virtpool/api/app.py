"""The FastAPI application: REST under /api/v1, OpenAPI at /docs."""

from __future__ import annotations

from fastapi import FastAPI

from virtpool import __version__
from virtpool.api import audit, docs, fast_reads, problems, web
from virtpool.api.app_prefix import API_PREFIX
from virtpool.api.auth_limit import FailedAuthLimiter
from virtpool.api.limits import BodyLimit
from virtpool.api.request_timer import RequestTimer
from virtpool.api.routes import audit as audit_routes
from virtpool.api.routes import (
    backups,
    events,
    groups,
    host,
    hosts,
    images,
    metrics,
    networks,
    operations,
    projects,
    secgroups,
    snapshots,
    tokens,
    usage,
    vms,
    whoami,
)
from virtpool.api.routes import pool as pool_routes
from virtpool.control.pool import Pool


def create_app(pool: Pool) -> FastAPI:
    app = FastAPI(
        title="virtpool",
        version=__version__,
        description="Pool the CPU, memory and disk of Linux hosts into QEMU virtual machines. "
                    "Every call but /healthz needs `Authorization: Bearer <token>` (Authorize).",
        docs_url=None, redoc_url=None, generate_unique_id_function=docs.operation_id,
    )
    app.state.pool = pool
    app.state.auth_limiter = FailedAuthLimiter(pool.audit)
    problems.install(app)
    problems.document(app)
    audit.install(app, pool.audit)
    app.add_middleware(BodyLimit)
    app.add_middleware(RequestTimer, observe=pool.metrics.request_seconds.observe)
    for module in (host, images, usage, vms, snapshots, backups, operations, events, audit_routes, projects, tokens, hosts,
                   groups, networks, secgroups, pool_routes, whoami):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(metrics.router)
    web.install(app)
    docs.install(app, API_PREFIX)
    # First: they take the plain reads of VMs; anything else goes on to the FastAPI routes.
    app.router.routes[0:0] = fast_reads.routes()
    return app
