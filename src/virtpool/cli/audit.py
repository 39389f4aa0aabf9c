"""`virtpool audit …`"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.common import JsonFlag, client

app = typer.Typer(help="Who changed what, and how it ended.", no_args_is_help=True)

UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str) -> datetime:
    """'30m', '2h', '7d' (ago) or an ISO time."""
    if text and text[-1] in UNITS and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{UNITS[text[-1]]: int(text[:-1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        output.fail(f"cannot read time '{text}'", hint="write e.g. 30m, 2h, 7d or 2026-11-27T10:00")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command("list")
def list_(since: Annotated[str | None, typer.Option(help="e.g. 1h, 7d or an ISO time")] = None,
          project_name: Annotated[str | None, typer.Option(
              "--project", help="only this project's entries (pool admins see every project's)")] = None,
          json: JsonFlag = False) -> None:
    """The audit log, oldest first: a project token sees its project's entries."""
    since_iso = parse_since(since).isoformat() if since else None
    with output.errors():
        api = client()
        entries, after = [], 0
        while True:
            batch = api.audit(after=after, since=since_iso, limit=1000, project=project_name)
            entries += batch
            if len(batch) < 1000:
                break
            after = batch[-1].id
    if json:
        return output.emit_json(entries)
    output.table(["TIME", "ACTOR", "PROJECT", "ACTION", "TARGET", "OUTCOME"],
                 [(f"{e.time:%Y-%m-%d %H:%M:%S}", e.actor, e.project or "-", e.action, e.target or "-", e.outcome)
                  for e in entries])
