"""The `virtpool` command: `virtpool <noun> <verb>`, all over the REST API except `up`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from virtpool.cli import common, host, image, output, vm

app = typer.Typer(help="virtpool: QEMU virtual machines on your hosts.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(vm.app, name="vm")
app.add_typer(image.app, name="image")
app.add_typer(host.app, name="host")


@app.callback()
def main(
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", envvar="VIRTPOOL_DATA_DIR",
        help="where `virtpool up` keeps its state (default /var/lib/virtpool as root)")] = None,
) -> None:
    common.set_data_dir(data_dir)


@app.command("up")
def up(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="state, images and VMs")] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT for the API (port 0: any free port)")] = "127.0.0.1:8470",
    accel: Annotated[str, typer.Option(help="auto, kvm or tcg")] = "auto",
    db: Annotated[str | None, typer.Option(help="database URL (default: SQLite in the data dir)")] = None,
    build: Annotated[bool, typer.Option("--build/--no-build", help="build the default image if missing")] = True,
    boot_timeout: Annotated[float, typer.Option(help="seconds a guest may take to answer its agent")] = 60.0,
    log_cap: Annotated[str, typer.Option(help="largest a VM's serial log may grow, e.g. 2M")] = "2M",
) -> None:
    """Run the platform on this host in the foreground: control plane, agent, API."""
    from virtpool.api.server import ServeOptions, parse_listen, serve
    from virtpool.model.errors import VirtpoolError
    from virtpool.model.units import parse_size_mib

    if accel not in ("auto", "kvm", "tcg"):
        output.fail(f"unknown accelerator '{accel}'", hint="use auto, kvm or tcg")
    try:
        host_, port = parse_listen(listen)
        log_cap_bytes = parse_size_mib(log_cap, what="log cap") * 1024 * 1024
        options = ServeOptions(data_dir=data_dir or common.data_dir(), host=host_, port=port,
                               accel=accel, db_url=db, build_default_image=build,
                               boot_timeout=boot_timeout, log_cap_bytes=log_cap_bytes)  # type: ignore[arg-type]
        serve(options, announce=lambda line: output.out.print(line, highlight=False))
    except VirtpoolError as err:
        output.fail(err.message, hint=err.hint)
    except OSError as err:
        output.fail(f"cannot serve on {listen}: {err.strerror}", hint="pick another --listen port")
