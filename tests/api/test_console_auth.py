"""The console websocket takes its token from a browser as a subprotocol ("bearer.<token>"),
since a browser's WebSocket cannot send an Authorization header; the token never goes in the
URL. The same checks apply as with the header: no token or a bad one is 401, a metrics or
viewer token is 403, and a good one reaches the VM (here a stopped one: 409)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import Server, make_server


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    srv = make_server(tmp_path_factory, image_cache, "wsauth")
    srv.api().create_vm("dbquiet")
    yield srv
    srv.cleanup()


def handshake_status(pool: Server, protocols: list[str]) -> int:
    url = pool.api().url.replace("http://", "ws://") + "/api/v1/vms/dbquiet/console"
    try:
        with connect(url, subprotocols=protocols, open_timeout=30):  # type: ignore[arg-type]
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def test_subprotocol_token_is_checked_like_the_header(pool: Server) -> None:
    api = pool.api()
    member = api.create_token("dbws-member", "member", project="default").token
    viewer = api.create_token("dbws-viewer", "viewer", project="default").token
    metrics = api.create_token("dbws-metrics", "metrics", pool_wide=True).token
    assert handshake_status(pool, ["virtpool.console"]) == 401
    assert handshake_status(pool, ["virtpool.console", "bearer.vp_not-a-token"]) == 401
    assert handshake_status(pool, ["virtpool.console", f"bearer.{metrics}"]) == 403
    assert handshake_status(pool, ["virtpool.console", f"bearer.{viewer}"]) == 403
    # Authenticated and allowed: refused only because the VM is stopped.
    assert handshake_status(pool, ["virtpool.console", f"bearer.{member}"]) == 409
    api.revoke_token("dbws-member")
    assert handshake_status(pool, ["virtpool.console", f"bearer.{member}"]) == 401
