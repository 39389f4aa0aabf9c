"""The attack: 2,000 made-up tokens thrown at the API from one address, while valid callers go
on working. The flood is answered 429 once over the limit, counted in one audit row per window,
and no valid caller is refused or left waiting on the flood's account."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil

from tests.conftest import Server, wait_for
from virtpool.api.auth_limit import LIMIT

ATTACKER = "127.0.0.2"  # every 127/8 address reaches the loopback server: a second client address
BYSTANDER = "127.0.0.3"
FLOOD = 2000


def client(server: Server, source: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.api().url + "/api/v1", timeout=60,
                        headers={"Authorization": f"Bearer {token}"},
                        transport=httpx.HTTPTransport(local_address=source))


def failed_rows(server: Server, address: str) -> list[dict[str, object]]:
    return [e.model_dump() for e in server.api().audit(limit=1000)
            if e.action == "auth.failed" and e.target == address]


def counted(row: dict[str, object]) -> int:
    return int(str(row["outcome"]).split()[0])


def established(pid: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections() if c.status == psutil.CONN_ESTABLISHED)


def test_a_flood_of_bad_tokens_is_limited_counted_once_and_slows_no_valid_caller(server: Server) -> None:
    admin = server.api()
    assert server.proc is not None
    audit_rows_before = len(admin.audit(limit=1000))
    fresh = admin.create_token("flood-bystander", "viewer", project="default").token
    unused = admin.create_token("flood-unused", "viewer", project="default").token

    statuses: list[int] = []
    retry_afters: list[str] = []
    lock = threading.Lock()
    flooding = threading.Event()
    flooding.set()

    def attack(count: int) -> None:
        with httpx.Client(base_url=admin.url + "/api/v1", timeout=60,
                          transport=httpx.HTTPTransport(local_address=ATTACKER)) as http:
            for _ in range(count):
                answer = http.get("/vms", headers={"Authorization": f"Bearer vp_{secrets.token_urlsafe(32)}"})
                with lock:
                    statuses.append(answer.status_code)
                    if answer.status_code == 429:
                        retry_afters.append(answer.headers.get("retry-after", ""))

    valid: list[int] = []

    def go_on_working(source: str, token: str) -> None:
        with client(server, source, token) as http:
            while flooding.is_set():
                valid.append(http.get("/vms").status_code)

    bystanders = [threading.Thread(target=go_on_working, args=(src, tok))
                  for src, tok in (("127.0.0.1", admin.token), (BYSTANDER, fresh))]
    for thread in bystanders:
        thread.start()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(attack, [FLOOD // 4] * 4))
    # While the attacker's address is limited: a token that already proved itself still works
    # from it (an attacker sharing the admin's address cannot lock the admin out)...
    with client(server, ATTACKER, admin.token) as http:
        assert http.get("/vms").status_code == 200
    # ...and a token it never used is not looked up: the address is limited, not the token.
    with client(server, ATTACKER, unused) as http:
        refused = http.get("/vms")
        assert refused.status_code == 429
        assert refused.json()["error"] == "RateLimited" and "try again in" in refused.json()["hint"]
    flooding.clear()
    for thread in bystanders:
        thread.join()

    assert len(statuses) == FLOOD and set(statuses) == {401, 429}
    assert statuses.count(429) >= FLOOD - 4 * LIMIT  # a new window may open once during the flood
    assert retry_afters and all(0 < int(r) <= 60 for r in retry_afters)
    assert valid and set(valid) == {200}, f"{len([v for v in valid if v != 200])} valid requests refused"

    # One row per window (the flood may straddle two), its count the attempts made.
    rows = wait_for(lambda: (r := failed_rows(server, ATTACKER)) and sum(map(counted, r)) == FLOOD + 1 and r,
                    timeout=10)
    assert rows and sum(map(counted, rows)) == FLOOD + 1, rows  # + the unused token's refusal
    assert 1 <= len(rows) <= 2
    # Leftovers: the audit log grew by those rows and the two token creations, not by the flood;
    # no connection of the flood is held open.
    assert len(admin.audit(limit=1000)) - audit_rows_before <= len(rows) + 2
    assert failed_rows(server, BYSTANDER) == [] and failed_rows(server, "127.0.0.1") == []
    assert wait_for(lambda: established(server.proc.pid) <= 2, timeout=10)
    admin.revoke_token("flood-bystander")
    admin.revoke_token("flood-unused")


def test_one_stale_token_retried_keeps_its_reason_and_is_not_limited(server: Server) -> None:
    """A client retrying its one revoked token is misconfigured, not guessing: it keeps the 401
    that says why, and its attempts are still counted in the audit row."""
    admin = server.api()
    stale = admin.create_token("flood-stale", "viewer", project="default").token
    admin.revoke_token("flood-stale")
    with client(server, "127.0.0.4", stale) as http:
        answers = [http.get("/vms") for _ in range(3 * LIMIT)]
    assert {a.status_code for a in answers} == {401}
    assert all("revoked" in a.json()["detail"] for a in answers)
    rows = wait_for(lambda: (r := failed_rows(server, "127.0.0.4")) and sum(map(counted, r)) == 3 * LIMIT and r,
                    timeout=10)
    assert rows and sum(map(counted, rows)) == 3 * LIMIT
