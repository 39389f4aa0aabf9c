"""How the CLI shows results: Rich for people, ``--json`` for scripts, and exit codes.

Exit codes: 0 done; 1 the platform refused (a 4xx: bad input, wrong state, not found);
3 the platform cannot be reached or the CLI is not configured; 4 the platform failed (5xx);
5 waited too long. `vm exec` exits with the guest command's own code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from virtpool.cli.config import ConfigError
from virtpool.sdk import APIError

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
EXIT_SERVER = 4
EXIT_TIMEOUT = 5

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = EXIT_REFUSED, hint: str | None = None) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    if hint:
        err.print(f"[dim]hint:[/] {hint}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn API and configuration errors into a message and an exit code."""
    try:
        yield
    except APIError as e:
        if e.status == 0:
            fail(e.detail, EXIT_UNREACHABLE, e.hint)
        fail(e.detail or e.title, EXIT_SERVER if e.status >= 500 else EXIT_REFUSED, e.hint)
    except ConfigError as e:
        fail(str(e), EXIT_UNREACHABLE)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, default=str) + "\n")


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    grid = Table(title=title, header_style="bold")
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*[str(c) for c in row])
    out.print(grid)


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in pairs:
        grid.add_row(key, str(value))
    out.print(grid)


STATE_STYLE = {
    "running": "green", "stopped": "dim", "paused": "yellow", "starting": "cyan",
    "stopping": "cyan", "crashed": "red", "error": "red", "creating": "cyan", "deleting": "cyan",
}


def state(value: str) -> str:
    return f"[{STATE_STYLE.get(value, 'white')}]{value}[/]"
