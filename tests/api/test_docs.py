"""The API's own documentation works offline, and the meta routes: against a real server."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server, make_server


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory, None, "docs", command="server")
    yield srv
    srv.stop()


def test_swagger_ui_is_served_from_the_package_not_a_cdn(control: Server) -> None:
    url = control.api().url
    page = httpx.get(f"{url}/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/docs/assets/") for a in assets), assets
    assert "https://" not in page.text and "http://" not in page.text  # nothing from outside
    for asset in assets:
        fetched = httpx.get(url + asset)
        assert fetched.status_code == 200 and len(fetched.content) > 100, asset
    bundle = httpx.get(f"{url}/docs/assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle


def test_openapi_has_a_bearer_scheme_and_sdk_operation_ids(control: Server) -> None:
    schema = httpx.get(f"{control.api().url}/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearer"]["description"]}
    assert schema["security"] == [{"bearer": []}]
    ids = {op["operationId"]: path for path, ops in schema["paths"].items() for op in ops.values()}
    for sdk_method in ("vms", "vm", "create_vm", "start_vm", "stop_vm", "exec", "logs", "operation",
                       "operations", "events", "hosts", "version", "healthz"):
        assert sdk_method in ids, sdk_method
    assert not [i for i in ids if i.endswith(("_get", "_post", "_put", "_delete"))]
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    client = control.api()
    for sdk_method in ("vms", "vm", "create_vm", "exec", "logs", "operation", "hosts", "inventory_host",
                       "project_info", "set_host_ratios", "pool_settings", "version"):
        assert hasattr(client, sdk_method) and sdk_method in ids, sdk_method


def test_healthz_needs_no_token_and_version_needs_one(control: Server) -> None:
    url = control.api().url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/api/v1/version").status_code == 401
    from virtpool import __version__

    assert control.api().version() == __version__
    shown = control.cli("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"virtpool {__version__}"
