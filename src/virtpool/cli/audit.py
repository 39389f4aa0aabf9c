"""`virtpool audit …`"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.common import ColumnsOption, JsonFlag, client

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
          columns: ColumnsOption = None,
          json: JsonFlag = False) -> None:
    """The audit log, oldest first: a project token sees its project's entries.

    Columns (-c): t time, a actor, p project, A action, T target, o outcome.

    Examples:

        virtpool audit list --since 1h

        virtpool audit list --json | jq -c '.[] | select(.outcome != "200")'
    """
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
    output.table(COLUMNS, [(f"{e.time:%Y-%m-%d %H:%M:%S}", e.actor, e.project or "-", e.action,
                            e.target or "-", e.outcome) for e in entries], chosen=columns)


# The action (`POST /vms/{name}/exec`) is never cut: it is what the line is about.
COLUMNS = (output.Column("TIME", "t", drop=4), output.Column("ACTOR", "a", shrink=True, min_width=10),
           output.Column("PROJECT", "p", drop=3, shrink=True), output.Column("ACTION", "A"),
           output.Column("TARGET", "T", shrink=True, min_width=10), output.Column("OUTCOME", "o", drop=2))
