"""`virtpool operation …`, and following an operation to its end with a progress bar."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from virtpool.cli import output
from virtpool.cli.common import ColumnsOption, JsonFlag, client
from virtpool.model.operation import Operation
from virtpool.sdk import Client

app = typer.Typer(help="Long actions (VM create and boot, start, stop, restart, image build).",
                  no_args_is_help=True)

STATUS_STYLE = {"pending": "cyan", "running": "cyan", "succeeded": "green", "failed": "red"}


def follow(api: Client, op: Operation, timeout: float, quiet: bool) -> Operation:
    """Wait for ``op`` to finish, showing its progress (on stderr, unless ``quiet``)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=output.err, disable=quiet, transient=True) as bar:
        task = bar.add_task(_describe(op), total=100, completed=op.progress)

        def show(current: Operation) -> None:
            bar.update(task, completed=current.progress, description=_describe(current))

        done = api.wait_operation(op, timeout=timeout, check=False, on_progress=show)
    if not done.done:
        output.fail(f"{done.kind} of '{done.target}' is still {done.status} after {timeout:g}s "
                    f"({done.progress}%)", output.EXIT_TIMEOUT,
                    hint=f"follow it with `virtpool operation show {done.id} --wait`")
    return done


def _describe(op: Operation) -> str:
    return f"{op.kind} {op.target or ''}: {op.message or op.status}"


def _status(value: str) -> str:
    return f"[{STATUS_STYLE.get(value, 'white')}]{value}[/]"


@app.command("list")
def list_(
    project: Annotated[str | None, typer.Option(help="only this project's")] = None,
    status: Annotated[str | None, typer.Option(help="pending, running, succeeded or failed")] = None,
    target: Annotated[str | None, typer.Option(help="only those acting on this VM or image")] = None,
    limit: Annotated[int, typer.Option(help="how many, newest first")] = 50,
    columns: ColumnsOption = None,
    json: JsonFlag = False,
) -> None:
    """Recent operations, newest first.

    Columns (-c): i id, k kind, t target, s status, p progress, a actor, c created, e error.

    Examples:

        virtpool operation list --status failed

        virtpool operation list -c iktse
    """
    with output.errors():
        ops = client().operations(project=project, status=status, target=target, limit=limit)
    if json:
        return output.emit_json(ops)
    output.table(COLUMNS, [(o.id, o.kind, o.target or "-", _status(o.status), f"{o.progress}%", o.actor,
                            f"{o.created_at:%Y-%m-%d %H:%M:%S}", o.error or "-") for o in ops],
                 chosen=columns)


# Ids are never cut (they are copied into `operation show`); the error is cut, then the rest goes.
COLUMNS = (output.Column("ID", "i"), output.Column("KIND", "k", drop=2), output.Column("TARGET", "t", drop=3, shrink=True),
           output.Column("STATUS", "s"), output.Column("PROGRESS", "p", drop=5, align="right"),
           output.Column("ACTOR", "a", drop=6, shrink=True), output.Column("CREATED", "c", drop=4),
           output.Column("ERROR", "e", drop=1, shrink=True, min_width=10))


@app.command("show")
def show(
    op_id: str,
    wait: Annotated[bool, typer.Option("--wait", help="follow it until it ends")] = False,
    wait_timeout: Annotated[float, typer.Option("--wait-timeout", help="seconds to follow it")] = 600.0,
    json: JsonFlag = False,
) -> None:
    """One operation; with --wait, follow it to its end (exit 1 if it failed).

    Examples:

        virtpool operation show 3f2a9c1e

        virtpool operation show 3f2a9c1e --wait --wait-timeout 600
    """
    with output.errors():
        api = client()
        op = api.operation(op_id)
        if wait:
            op = follow(api, op, wait_timeout, json)
    if json:
        output.emit_json(op)
    else:
        output.fields([
            ("id", op.id), ("kind", op.kind), ("target", op.target or "-"), ("status", _status(op.status)),
            ("progress", f"{op.progress}%"), ("message", op.message or "-"), ("error", op.error or "-"),
            ("actor", op.actor), ("project", op.project or "-"), ("created", op.created_at),
            ("updated", op.updated_at),
        ])
    if wait and op.status == "failed":
        raise typer.Exit(output.EXIT_REFUSED)
