"""The API's own documentation, offline: Swagger UI from assets shipped in a pinned Python
package (swagger-ui-bundle-v2, Swagger UI 5, which reads OpenAPI 3.1), never from a CDN; the
bearer security scheme (the Authorize button); operation ids named as the SDK's methods; and
`GET /healthz` (no token) and `GET /api/v1/version`.
"""

from __future__ import annotations

from typing import Any

import swagger_ui_bundle
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from virtpool import __version__
from virtpool.api.deps import Caller

ASSETS = "/docs/assets"
SCHEME = "bearer"

# Route functions are named for what they do; the operation id is the SDK method that calls
# them: ``list_X`` -> ``X``, ``show_X`` -> ``X`` (list_vms -> vms, show_vm -> vm), else the
# function's own name (create_vm), except for these: (function, path) -> id.
SDK_NAMES: dict[tuple[str, str], str] = {
    ("exec_vm", "/api/v1/vms/{name}/exec"): "exec", ("vm_logs", "/api/v1/vms/{name}/logs"): "logs",
    ("list_audit", "/api/v1/audit"): "audit", ("show_project", "/api/v1/projects/{name}"): "project_info",
    ("update_memory_policy", "/api/v1/host/memory-policy"): "set_memory_policy",
    ("show_host", "/api/v1/hosts/{name}"): "inventory_host",
    ("set_ratios", "/api/v1/hosts/{name}/ratios"): "set_host_ratios",
    ("set_labels", "/api/v1/hosts/{name}/labels"): "label_host",
    ("set_state", "/api/v1/hosts/{name}/state"): "set_host_state",
    ("show_settings", "/api/v1/pool/settings"): "pool_settings",
    ("update_settings", "/api/v1/pool/settings"): "set_pool_settings",
    ("plan_rebalance", "/api/v1/pool/rebalance"): "rebalance",
}


def operation_id(route: APIRoute) -> str:
    """The operation id of a route: the SDK method's name (``vms``, ``create_vm``, ``exec``…)."""
    known = SDK_NAMES.get((route.name, route.path))
    if known is not None:
        return known
    for prefix in ("list_", "show_"):
        if route.name.startswith(prefix):
            return route.name.removeprefix(prefix)
    return route.name


class Version(BaseModel):
    version: str
    api: str = "v1"


class Health(BaseModel):
    status: str = "ok"


router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["meta"], openapi_extra={"security": []},
            summary="Is the server up? No token needed (for load balancers and probes)")
def healthz() -> Health:
    return Health()


versioned = APIRouter(tags=["meta"])


@versioned.get("/version", response_model=Version, summary="The server's version")
def version(_: Caller) -> Version:
    return Version(version=__version__)


def install(app: FastAPI, api_prefix: str) -> None:
    """Serve /docs from the shipped assets, publish the bearer scheme, add the meta routes."""
    app.include_router(router)
    app.include_router(versioned, prefix=api_prefix)
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title="virtpool API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True})

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
            "type": "http", "scheme": "bearer",
            "description": "an API token: the one `virtpool up` wrote (admin.token) or one from "
                           "`virtpool token create`"}
        schema["security"] = [{SCHEME: []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
