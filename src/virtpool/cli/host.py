"""`virtpool host …`"""

from __future__ import annotations

import typer

from virtpool.cli import output
from virtpool.cli.common import JsonFlag, client
from virtpool.model.units import format_mib

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
