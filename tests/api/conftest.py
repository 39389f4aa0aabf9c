"""API tests run against real servers on both backends: SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, make_server
from tests.postgres import create_database

BACKENDS = ["sqlite", "postgresql"]


def database_for(backend: str, request: pytest.FixtureRequest) -> str | None:
    """None for SQLite (the server's default); a fresh database on the session's PostgreSQL."""
    if backend == "sqlite":
        return None
    server_url = request.getfixturevalue("postgres")
    return create_database(server_url, f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def api_server(backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               image_cache: Path) -> Iterator[Server]:
    """A `virtpool up` per module and backend, with the default image."""
    srv = make_server(tmp_path_factory, image_cache, f"api-{backend}", db_url=database_for(backend, request))
    yield srv
    srv.cleanup()
