"""`virtpool up`, `virtpool server` and `virtpool agent`: run the platform, its control plane
alone, or one more host's agent."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

import typer

from virtpool.cli import common, output


AgentListen = Annotated[str | None, typer.Option(
    help="HOST:PORT where agents join, HTTPS (default: the API's host, its port + 1)")]
TLSCert = Annotated[Path | None, typer.Option(
    "--tls-cert", help="the API's certificate (PEM); default beyond loopback: one of the pool CA")]
TLSKey = Annotated[Path | None, typer.Option("--tls-key", help="the key of --tls-cert (PEM)")]
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _log_to_stderr() -> None:
    """virtpool's own log lines from INFO up on stderr (what a converge changed, VMs adopted,
    heartbeats lost ...): without a handler Python shows only warnings. Other libraries' INFO
    (httpx logs every request) stays out."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    ours = logging.getLogger("virtpool")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False  # its warnings once, not again through Python's last-resort handler


CAPassphrase = Annotated[Path | None, typer.Option(
    "--ca-passphrase-file", help="the pool CA's passphrase (a copy of pki/ca.passphrase of the "
                                 "pool's first server; needed by every further server on its database)")]


def server(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="admin token and URL file")] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT for the API (port 0: any free port); beyond loopback it serves HTTPS only")] = "127.0.0.1:8470",
    db: Annotated[str | None, typer.Option(help="database URL, e.g. postgresql://user@host/db "
                                                "(default: SQLite in the data dir)")] = None,
    agent_listen: AgentListen = None,
    tls_cert: TLSCert = None,
    tls_key: TLSKey = None,
    ca_passphrase_file: CAPassphrase = None,
) -> None:
    """Run the control plane only (API, records, the pool's images), without an agent here.

    VMs run on the hosts whose agents joined (`virtpool host join-token`, then
    `virtpool agent --server JOIN_URL --join TOKEN` on each); the join URL is printed at start.

    Examples:

        virtpool server --db postgresql://virtpool@db.example.com/virtpool --agent-listen 0.0.0.0:8471
    """
    from virtpool.api.server import ServeOptions, parse_listen, serve
    from virtpool.model.errors import VirtpoolError

    _log_to_stderr()
    try:
        host_, port = parse_listen(listen)
        serve(ServeOptions(data_dir=data_dir or common.data_dir(), host=host_, port=port, db_url=db,
                           control_only=True, tls_cert=tls_cert, tls_key=tls_key,
                           ca_passphrase_file=ca_passphrase_file,
                           agent_listen=parse_listen(agent_listen) if agent_listen else None),
              announce=lambda line: output.print_line(line, wrapped=False))
    except VirtpoolError as err:
        output.fail(err.message, hint=err.hint)
    except OSError as err:
        output.fail(f"cannot serve on {listen}: {err.strerror}", hint="pick another --listen port")


def up(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="state, images and VMs")] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT for the API (port 0: any free port); beyond loopback it serves HTTPS only")] = "127.0.0.1:8470",
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
                                                 "nftables tables (a lowercase letter, then up "
                                                 "to 3 lowercase letters or digits)")] = "vp",
    agent_listen: AgentListen = None,
    tls_cert: TLSCert = None,
    tls_key: TLSKey = None,
    ca_passphrase_file: CAPassphrase = None,
    vtep: Annotated[str | None, typer.Option(
        help="this host's address for VXLAN to joined hosts, so that a network spans them and "
             "this one (default: --agent-listen's address when it is one particular address)")] = None,
) -> None:
    """Run the platform on this host in the foreground: control plane, agent, API. Agents on
    other hosts join it at the URL it prints.

    Examples:

        virtpool up

        virtpool up --listen 127.0.0.1:8470 --data-dir /var/lib/virtpool

        virtpool up --db postgresql://virtpool@db.example.com/virtpool

        virtpool up --agent-listen 192.0.2.10:8471 --vtep 192.0.2.10
    """
    from pydantic import ValidationError

    from virtpool.api.server import ServeOptions, parse_listen, serve, vtep_address
    from virtpool.control.balancer import MemoryPolicy
    from virtpool.model.errors import VirtpoolError
    from virtpool.model.units import parse_size_mib

    _log_to_stderr()
    if accel not in ("auto", "kvm", "tcg"):
        output.fail(f"unknown accelerator '{accel}'", hint="use auto, kvm or tcg")
    _check_net_prefix(net_prefix)
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
                               memory=memory, net_prefix=net_prefix,  # type: ignore[arg-type]
                               tls_cert=tls_cert, tls_key=tls_key, ca_passphrase_file=ca_passphrase_file,
                               agent_listen=parse_listen(agent_listen) if agent_listen else None,
                               vtep=vtep_address(vtep) if vtep is not None else None)
        serve(options, announce=lambda line: output.print_line(line, wrapped=False))
    except VirtpoolError as err:
        output.fail(err.message, hint=err.hint)
    except ValidationError as err:
        output.fail(f"invalid memory settings: {err.errors()[0]['msg']}")
    except OSError as err:
        output.fail(f"cannot serve on {listen}: {err.strerror}", hint="pick another --listen port")


def agent(
    server: Annotated[str, typer.Option(help="the join URL the control plane printed (https://…)")],
    join: Annotated[str | None, typer.Option(help="a join token (first start only)")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="this agent's state, images and VMs")] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT this agent serves on (HTTPS)")] = "0.0.0.0:8472",
    name: Annotated[str | None, typer.Option(help="this host's name in the pool (default: hostname)")] = None,
    net_prefix: Annotated[str, typer.Option(help="name prefix of this host's bridges, taps and "
                                                 "nftables tables (a lowercase letter, then up "
                                                 "to 3 lowercase letters or digits)")] = "vp",
) -> None:
    """Run this host's agent: join the pool (first start, with --join), then serve the control
    plane over mutual TLS and heartbeat to it. VMs keep running when it stops.

    Examples:

        virtpool agent --server https://cp.example.com:8471 --join vpj1.TOKEN --name node2

        virtpool agent --server https://cp.example.com:8471
    """
    from virtpool.api.server import parse_listen
    from virtpool.model.errors import VirtpoolError
    from virtpool.node.service.run import AgentOptions
    from virtpool.node.service.run import serve as serve_agent

    _check_net_prefix(net_prefix)
    if not server.startswith("https://"):
        output.fail(f"'{server}' is not an https:// URL", hint="pass the join URL the control plane printed")
    _log_to_stderr()
    default_dir = Path("/var/lib/virtpool-agent") if os.geteuid() == 0 else \
        Path.home() / ".local/share/virtpool-agent"
    try:
        host_, port = parse_listen(listen)
        serve_agent(AgentOptions(server=server, data_dir=data_dir or default_dir, join=join,
                                 listen_host=host_, listen_port=port, name=name, net_prefix=net_prefix),
                    announce=lambda line: output.print_line(line, wrapped=False))
    except VirtpoolError as err:
        output.fail(err.message, hint=err.hint)
    except OSError as err:
        output.fail(f"cannot serve on {listen}: {err.strerror}", hint="pick another --listen port")


def _check_net_prefix(net_prefix: str) -> None:
    # Device names are the prefix, a kind (br, vx, t) and a hex number, within the kernel's 15
    # characters; a digit in it is as safe as a letter (test runs use prefixes such as n6).
    if not re.fullmatch(r"[a-z][a-z0-9]{0,3}", net_prefix):
        output.fail(f"'{net_prefix}' is not a valid --net-prefix",
                    hint="use a lowercase letter, then up to 3 lowercase letters or digits "
                         "(e.g. vp, n6)")
