"""What the failed-authentication limiter costs a valid caller: a valid token checked through
the limiter vs the same token checked directly, interleaved in one run, on a real SQLite
database; then the same while another address floods bad tokens (limited after 20).

    .venv/bin/python bench/auth_limit.py

Last line: {"name": "auth_limit", "plain_us": …, "limited_us": …, "ratio": …,
"under_flood_us": …, "flood_ratio": …}
"""

from __future__ import annotations

import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from virtpool.api.auth_limit import FailedAuthLimiter
from virtpool.control.audit import AuditLog
from virtpool.control.auth import TokenService
from virtpool.control.store import db
from virtpool.model.errors import RateLimited, Unauthorized

ROUNDS = 2000


def timed(call) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        engine = db.open_database(db.sqlite_url(Path(scratch) / "state.db"))
        sessions = db.session_factory(engine)
        tokens = TokenService(sessions)
        limiter = FailedAuthLimiter(AuditLog(sessions))
        secret = tokens.create("bench", "admin")
        plain, limited, flooded = [], [], []
        for _ in range(ROUNDS):  # interleaved, so that drift on a shared machine hits both alike
            plain.append(timed(lambda: tokens.authenticate(secret)))
            limited.append(timed(lambda: limiter.authenticate(tokens, secret, "127.0.0.1")))
        for _ in range(ROUNDS):
            try:
                limiter.authenticate(tokens, "vp_" + secrets.token_urlsafe(32), "127.0.0.2")
            except (Unauthorized, RateLimited):
                pass
            flooded.append(timed(lambda: limiter.authenticate(tokens, secret, "127.0.0.1")))
        limiter.flush()
        engine.dispose()
    figures = {"name": "auth_limit", "plain_us": round(statistics.median(plain), 1),
               "limited_us": round(statistics.median(limited), 1),
               "under_flood_us": round(statistics.median(flooded), 1)}
    figures["ratio"] = round(figures["limited_us"] / figures["plain_us"], 3)
    figures["flood_ratio"] = round(figures["under_flood_us"] / figures["plain_us"], 3)
    print(f"valid token, median of {ROUNDS}: direct {figures['plain_us']} µs, through the limiter "
          f"{figures['limited_us']} µs (x{figures['ratio']}), while another address floods "
          f"{figures['under_flood_us']} µs (x{figures['flood_ratio']})", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
