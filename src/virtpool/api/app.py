"""The FastAPI application: REST under /api/v1, OpenAPI at /docs."""

from __future__ import annotations

from fastapi import FastAPI

from virtpool import __version__
from virtpool.api import problems
from virtpool.api.routes import events, host, images, vms
from virtpool.control.pool import Pool

API_PREFIX = "/api/v1"


def create_app(pool: Pool) -> FastAPI:
    app = FastAPI(
        title="virtpool",
        version=__version__,
        description="Pool the CPU, memory and disk of Linux hosts into QEMU virtual machines.",
    )
    app.state.pool = pool
    problems.install(app)
    for module in (host, images, vms, events):
        app.include_router(module.router, prefix=API_PREFIX)
    return app
