"""`virtpool up` and `virtpool server`: run the platform, or its control plane alone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from virtpool.cli import common, output


def server(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="admin token and URL file")] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT for the API (port 0: any free port)")] = "127.0.0.1:8470",
    db: Annotated[str | None, typer.Option(help="database URL, e.g. postgresql://user@host/db "
                                                "(default: SQLite in the data dir)")] = None,
) -> None:
    """Run the control plane only (API and records), without an agent on this host.

    VM records, operations, events and the audit log are served; actions that need a host
    answer 503 until remote agents can be attached (not supported yet).
    """
    from virtpool.api.server import ServeOptions, parse_listen, serve
    from virtpool.model.errors import VirtpoolError

    try:
        host_, port = parse_listen(listen)
        serve(ServeOptions(data_dir=data_dir or common.data_dir(), host=host_, port=port, db_url=db,
                           control_only=True),
              announce=lambda line: output.print_line(line, wrapped=False))
    except VirtpoolError as err:
        output.fail(err.message, hint=err.hint)
    except OSError as err:
        output.fail(f"cannot serve on {listen}: {err.strerror}", hint="pick another --listen port")


def up(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="state, images and VMs")] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT for the API (port 0: any free port)")] = "127.0.0.1:8470",
    accel: Annotated[str, typer.Option(help="auto, kvm or tcg")] = "auto",
    db: Annotated[str | None, typer.Option(help="database URL, e.g. postgresql://user@host/db "
                                                "(default: SQLite in the data dir)")] = None,
    build: Annotated[bool, typer.Option("--build/--no-build", help="build the default image if missing")] = True,
    boot_timeout: Annotated[float, typer.Option(help="seconds a guest may take to answer its agent")] = 60.0,
    log_cap: Annotated[str, typer.Option(help="largest a VM's serial log may grow, e.g. 2M")] = "2M",
    memory_ratio: Annotated[float, typer.Option(help="memory overcommit; above 1.0 the balancer moves balloons")] = 1.0,
    memory_budget: Annotated[str | None, typer.Option(help="count this as the host's memory, e.g. 8G")] = None,
    memory_threshold: Annotated[str, typer.Option(help="reclaim guest memory when available falls below")] = "256M",
    net_prefix: Annotated[str, typer.Option(help="name prefix of this host's bridges, taps and "
                                                 "nftables tables (1-4 lowercase letters)")] = "vp",
) -> None:
    """Run the platform on this host in the foreground: control plane, agent, API."""
    from pydantic import ValidationError

    from virtpool.api.server import ServeOptions, parse_listen, serve
    from virtpool.control.balancer import MemoryPolicy
    from virtpool.model.errors import VirtpoolError
    from virtpool.model.units import parse_size_mib

    if accel not in ("auto", "kvm", "tcg"):
        output.fail(f"unknown accelerator '{accel}'", hint="use auto, kvm or tcg")
    if not re.fullmatch(r"[a-z]{1,4}", net_prefix):
        output.fail(f"'{net_prefix}' is not a valid --net-prefix", hint="use 1-4 lowercase letters")
    try:
        host_, port = parse_listen(listen)
        log_cap_bytes = parse_size_mib(log_cap, what="log cap") * 1024 * 1024
        memory = MemoryPolicy(
            ratio=memory_ratio,
            budget_mib=parse_size_mib(memory_budget, what="memory budget") if memory_budget else None,
            threshold_mib=parse_size_mib(memory_threshold, what="memory threshold"),
        )
        options = ServeOptions(data_dir=data_dir or common.data_dir(), host=host_, port=port,
                               accel=accel, db_url=db, build_default_image=build,
                               boot_timeout=boot_timeout, log_cap_bytes=log_cap_bytes,
                               memory=memory, net_prefix=net_prefix)  # type: ignore[arg-type]
        serve(options, announce=lambda line: output.print_line(line, wrapped=False))
    except VirtpoolError as err:
        output.fail(err.message, hint=err.hint)
    except ValidationError as err:
        output.fail(f"invalid memory settings: {err.errors()[0]['msg']}")
    except OSError as err:
        output.fail(f"cannot serve on {listen}: {err.strerror}", hint="pick another --listen port")
