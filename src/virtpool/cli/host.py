"""`virtpool host …`"""

from __future__ import annotations

from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.common import JsonFlag, client
from virtpool.model.errors import VirtpoolError
from virtpool.model.units import format_mib, parse_size_mib

app = typer.Typer(help="This host's capacity.", no_args_is_help=True)


@app.command("show")
def show(json: JsonFlag = False) -> None:
    """CPUs, memory, disk and the accelerator QEMU uses here."""
    with output.errors():
        info = client().host()
    if json:
        return output.emit_json(info)
    output.fields([
        ("hostname", info.hostname),
        ("cpus", info.cpus),
        ("memory", format_mib(info.memory_mib)),
        ("disk", f"{format_mib(info.disk_free_mib)} free of {format_mib(info.disk_total_mib)}"),
        ("accelerator", f"{info.accel} ({info.accel_reason})"),
        ("qemu", info.qemu_version),
        ("data dir", info.data_dir),
    ])


@app.command("top")
def top(once: Annotated[bool, typer.Option("--once", help="print once and exit")] = False,
        json: JsonFlag = False) -> None:
    """Every VM on this host with its CPU, memory and disk use, refreshed live."""
    from virtpool.cli.vm import live_table

    with output.errors():
        api = client()
        if json:
            return output.emit_json(api.host_top())
        live_table(api.host_top, watch=not once)


@app.command("memory-policy")
def memory_policy(
    budget: Annotated[str | None, typer.Option(help="count this much as the host's memory, e.g. 4G")] = None,
    threshold: Annotated[str | None, typer.Option(help="reclaim guest memory when available falls below")] = None,
    json: JsonFlag = False,
) -> None:
    """Show, or change, how the host's memory is shared between VMs."""
    with output.errors():
        api = client()
        if budget is None and threshold is None:
            policy = api.memory_policy()
        else:
            try:
                policy = api.set_memory_policy(
                    budget_mib=parse_size_mib(budget, what="budget") if budget else None,
                    threshold_mib=parse_size_mib(threshold, what="threshold") if threshold else None)
            except VirtpoolError as err:
                output.fail(err.message, hint=err.hint)
    if json:
        return output.emit_json(policy)
    output.fields([(k.replace("_", " "), v if v is not None else "-") for k, v in policy.items()])
