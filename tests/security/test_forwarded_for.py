"""The attack: a local client guessing tokens with a new X-Forwarded-For on every request, to
pose as many addresses to the failed-authentication limit. The limit counts the TCP peer
(api/auth_limit.py), so the guesser is refused 429 once over it, under its own address."""

from __future__ import annotations

import secrets

import httpx

from tests.conftest import Server
from virtpool.api.auth_limit import LIMIT


def test_a_forged_x_forwarded_for_does_not_escape_the_failed_authentication_limit(server: Server) -> None:
    admin = server.api()
    admin.audit(limit=1)  # the admin's token proved itself: the limit never refuses it
    statuses = []
    # From 127.0.0.1, the address uvicorn's proxy headers trust by default.
    with httpx.Client(base_url=admin.url + "/api/v1", timeout=60,
                      transport=httpx.HTTPTransport(local_address="127.0.0.1")) as http:
        for n in range(LIMIT + 1):
            answer = http.get("/vms", headers={"Authorization": f"Bearer vp_{secrets.token_urlsafe(32)}",
                                               "X-Forwarded-For": f"198.51.100.{n + 1}"})
            statuses.append(answer.status_code)
    assert statuses == [401] * LIMIT + [429], statuses
    targets = {e.target for e in admin.audit(limit=1000) if e.action == "auth.failed"}
    assert targets == {"127.0.0.1"}, targets
