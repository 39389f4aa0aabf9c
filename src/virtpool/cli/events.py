"""`virtpool events`: what the pool did and why."""

from __future__ import annotations

from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.common import JsonFlag, client


def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing events as they happen")] = False,
    kind: Annotated[str | None, typer.Option(help="e.g. vm.state, memory.balloon")] = None,
    vm_name: Annotated[str | None, typer.Option("--vm", help="only this VM's events")] = None,
    project: Annotated[str | None, typer.Option("--project", help="only this project's events")] = None,
    json: JsonFlag = False,
) -> None:
    """What the pool did and why: state changes, automatic balloon moves, what a host's
    network converge changed (network.changed) or put back after it was changed by hand
    (network.healed).

    With --follow, events are streamed from the server (server-sent events) as they happen,
    until Ctrl-C; if the server goes away the command exits 3. With --json each event is one
    line of JSON (JSON Lines), with or without --follow.

    Examples:

        virtpool events --vm web

        virtpool events --follow --json | jq -c 'select(.kind == "vm.state")'
    """
    with output.errors():
        api = client()
        if follow:
            stream = api.stream_events(kind=kind, vm=vm_name, project=project)
        else:
            stream = iter(api.events(kind=kind, vm=vm_name, project=project, limit=1000))
        try:
            for event in stream:
                if json:
                    output.emit_jsonl(event)
                else:
                    output.print_line(f"{event.time:%Y-%m-%d %H:%M:%S}  {event.kind:<15} {event.actor:<16} "
                                      f"{event.message}")
        except KeyboardInterrupt:
            pass
