"""Schemathesis against /openapi.json of a real server: no 5xx, and every response matches the
schema the API publishes for it (body, content type), for generated valid and invalid input.

Left out: image build and import (a build fetches packages and an import could make an image
that fuzzed VMs then boot), and the endless event stream (tested in test_events_stream.py).
The server has no image, so no fuzzed VM can boot.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.api.conftest import database_for
from tests.conftest import Server, make_server

EXAMPLES = 50
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def fuzzed(backend: str, request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory, None, f"fuzz-{backend}", db_url=database_for(backend, request))
    yield srv
    srv.cleanup()


def test_api_conforms_to_its_schema(fuzzed: Server) -> None:
    api = fuzzed.api()
    schema = (schemathesis.openapi.from_url(f"{api.url}/openapi.json")
              .exclude(path_regex=r"^/api/v1/images(/\{name\}/build)?$", method="POST")
              .exclude(path="/api/v1/events/stream"))
    headers = {"Authorization": f"Bearer {api.token}"}
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20  # the whole API, less the few left out

    for operation in operations:
        # (The pytest plugin's lazy loader does not work with this pytest; hypothesis directly.)
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=api.url, headers=headers, checks=CHECKS, timeout=60)

        try:
            run()
        except (Exception, BaseExceptionGroup) as err:  # noqa: BLE001 - collected: one run reports every failing operation
            failures[f"{operation.method.upper()} {operation.path}"] = str(err)[:2000]
    assert not failures, "\n\n".join(f"{op}:\n{text}" for op, text in failures.items())
