"""`virtpool host …`"""

from __future__ import annotations

from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.common import ColumnsOption, HostName, JsonFlag, client
from virtpool.model.errors import VirtpoolError
from virtpool.model.inventory import HostView
from virtpool.model.resources import ADMIN_HOST_STATES
from virtpool.model.units import format_mib, parse_size_mib

app = typer.Typer(help="The pool's hosts: capacity, allocation, ratios, labels, states.",
                  no_args_is_help=True)


@app.command("show")
def show(
    name: Annotated[str | None, typer.Argument(help="a host of the pool (default: this server's "
                                               "own host's hardware)")] = None,
    json: JsonFlag = False,
) -> None:
    """A host of the pool: state, lease, agent, allocation; without NAME, the CPUs, memory,
    disk and accelerator of the host this server runs on.

    Examples:

        virtpool host show node1

        virtpool host show node1 --json
    """
    if name is not None:
        with output.errors():
            host = client().inventory_host(name)
        if json:
            return output.emit_json(host)
        return output.fields(host_fields(host))
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


def lease_age(h: HostView) -> str:
    """``2.1s ago``, or ``-`` for a host whose agent never took its lease."""
    return "-" if h.lease_age_s is None else f"{h.lease_age_s:.1f}s ago"


def host_fields(h: HostView) -> list[tuple[str, object]]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(h.labels.items())) or "-"
    return [
        ("name", f"{h.name} (this server's own host)" if h.local else h.name),
        ("state", h.state),
        ("lease", f"epoch {h.lease_epoch}, renewed {lease_age(h)}" if h.lease_epoch else "-"),
        ("agent version", h.agent_version or "-"),
        ("address", h.address or ("in this server's process" if h.local else "-")),
        ("accelerator", h.accel),
        ("vcpus", f"{h.cpus.allocated} of {h.cpus.capacity} (ratio {h.cpu_ratio:g})"),
        ("memory", f"{format_mib(h.memory_mib.allocated)} of {format_mib(h.memory_mib.capacity)} "
                   f"(ratio {h.memory_ratio:g})"),
        ("disk", f"{format_mib(h.disk_mib.allocated)} of {format_mib(h.disk_mib.capacity)} "
                 f"(ratio {h.disk_ratio:g})"),
        ("vms", h.vms),
        ("labels", labels),
    ]


@app.command("top")
def top(once: Annotated[bool, typer.Option("--once", help="print once and exit")] = False,
        json: JsonFlag = False) -> None:
    """Every VM on this host with its CPU, memory and disk use, refreshed live.

    Examples:

        virtpool host top

        virtpool host top --once --json
    """
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
    """Show, or change, how the host's memory is shared between VMs.

    Examples:

        virtpool host memory-policy

        virtpool host memory-policy --budget 16G --threshold 1G
    """
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


# -- the pool's inventory (`host list`, `set-ratio`, `label`, `drain`, `state`) ------------

STATE_STYLE = {"up": "green", "draining": "yellow", "maintenance": "cyan", "down": "red",
               "unreachable": "bold red"}


def used(allocated: int, capacity: int, text: str) -> str:
    """``4/8 50%``: allocated of capacity, red from 90 %, yellow from 70 %."""
    fraction = allocated / capacity if capacity > 0 else 0.0
    style = "red" if fraction >= 0.9 else "yellow" if fraction >= 0.7 else "green"
    return f"{text} [{style}]{fraction:.0%}[/]"


def _row(h: HostView) -> tuple[str, ...]:
    name = f"{h.name} (local)" if h.local else h.name
    labels = ",".join(f"{k}={v}" for k, v in sorted(h.labels.items())) or "-"
    return (
        name, f"[{STATE_STYLE.get(h.state, 'white')}]{h.state}[/]",
        used(h.cpus.allocated, h.cpus.capacity, f"{h.cpus.allocated}/{h.cpus.capacity}"),
        used(h.memory_mib.allocated, h.memory_mib.capacity,
             f"{format_mib(h.memory_mib.allocated)}/{format_mib(h.memory_mib.capacity)}"),
        used(h.disk_mib.allocated, h.disk_mib.capacity,
             f"{format_mib(h.disk_mib.allocated)}/{format_mib(h.disk_mib.capacity)}"),
        str(h.vms), f"{h.cpu_ratio:g}/{h.memory_ratio:g}/{h.disk_ratio:g}", labels,
        lease_age(h), h.agent_version or "-", h.address or ("local" if h.local else "-"),
    )


# Figures are never cut (`0M/2410…` told nothing); the lease, agent and address go first on a
# narrow terminal, then labels and ratios.
COLUMNS = (output.Column("HOST", "n"), output.Column("STATE", "s"), output.Column("VCPUS", "c"),
           output.Column("MEMORY", "m"), output.Column("DISK", "d", drop=3),
           output.Column("VMS", "v", drop=2, align="right"),
           output.Column("RATIOS", "r", drop=4), output.Column("LABELS", "l", drop=5, shrink=True),
           output.Column("LEASE", "L", drop=6), output.Column("AGENT", "g", drop=8),
           output.Column("ADDRESS", "a", drop=7, shrink=True))


def _show(host: HostView, json: bool) -> None:
    if json:
        return output.emit_json(host)
    output.table(COLUMNS, [_row(host)])


@app.command("list")
def list_(columns: ColumnsOption = None, json: JsonFlag = False) -> None:
    """Every host of the pool: state, allocated/total per resource (under its ratios), labels,
    when its agent last renewed its lease, the agent's version and address.

    Columns (-c): n host, s state, c vcpus, m memory, d disk, v vms, r ratios (CPU/memory/disk),
    l labels, L lease, g agent, a address.

    Examples:

        virtpool host list

        virtpool host list -c nsmvL
    """
    with output.errors():
        hosts = client().hosts()
    if json:
        return output.emit_json(hosts)
    output.table(COLUMNS, [_row(h) for h in hosts], chosen=columns)


@app.command("set-ratio")
def set_ratio(
    name: HostName,
    cpu: Annotated[float | None, typer.Option("--cpu", help="vCPUs per logical CPU, e.g. 4")] = None,
    memory: Annotated[float | None, typer.Option("--memory", help="above 1.0 needs ballooning")] = None,
    disk: Annotated[float | None, typer.Option("--disk", help="disk overcommit")] = None,
    json: JsonFlag = False,
) -> None:
    """Change a host's allocation ratios. A ratio that would leave its VMs holding more than
    the host may promise is refused: move or delete VMs first.

    Examples:

        virtpool host set-ratio node1 --cpu 4 --memory 1.2

        virtpool host set-ratio node1 --disk 2
    """
    with output.errors():
        host = client().set_host_ratios(name, cpu=cpu, memory=memory, disk=disk)
    _show(host, json)


@app.command("label")
def label(
    name: HostName,
    labels: Annotated[list[str] | None, typer.Argument(help="key=value pairs to set")] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove", help="a key to remove; repeat")] = None,
    json: JsonFlag = False,
) -> None:
    """Set (k=v) and remove (--remove k) labels; `vm create --require-label k=v` matches them.

    Examples:

        virtpool host label node1 rack=r1 ssd=yes

        virtpool host label node1 --remove ssd
    """
    pairs = parse_labels(labels or [])
    with output.errors():
        host = client().label_host(name, set=pairs, remove=remove or [])
    _show(host, json)


def parse_labels(items: list[str]) -> dict[str, str]:
    """``["zone=a", "disk=ssd"]`` → ``{"zone": "a", "disk": "ssd"}``; exits on a malformed one."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            output.fail(f"cannot read label '{item}'", hint="write key=value, e.g. zone=a")
        pairs[key] = value
    return pairs


@app.command("drain")
def drain(name: HostName, json: JsonFlag = False) -> None:
    """Take no new VMs on a host (its VMs stay); `host state NAME up` undoes it.

    Examples:

        virtpool host drain node1
    """
    with output.errors():
        host = client().set_host_state(name, "draining")
    _show(host, json)


@app.command("state")
def state(
    name: HostName,
    new: Annotated[str, typer.Argument(metavar="STATE", help=" | ".join(ADMIN_HOST_STATES))],
    json: JsonFlag = False,
) -> None:
    """Set a host's state: up takes new VMs; draining, maintenance and down take none.

    Examples:

        virtpool host state node1 maintenance

        virtpool host state node1 up
    """
    if new not in ADMIN_HOST_STATES:
        output.fail(f"unknown host state '{new}'", hint=f"one of: {', '.join(ADMIN_HOST_STATES)}")
    with output.errors():
        host = client().set_host_state(name, new)
    _show(host, json)


@app.command("join-token")
def join_token(
    expires: Annotated[str, typer.Option(help="how long it stays valid, e.g. 30m, 1h, 2d")] = "1h",
    json: JsonFlag = False,
) -> None:
    """A one-time, expiring token for `virtpool agent --server URL --join TOKEN` (admin).

    Examples:

        virtpool host join-token

        virtpool host join-token --expires 30m --json
    """
    seconds = parse_duration_s(expires)
    with output.errors():
        issued = client().join_token(seconds)
    if json:
        return output.emit_json(issued)
    output.print_line(issued["token"], wrapped=False)
    url = issued.get("join_url") or "JOIN_URL"
    output.print_line(f"valid once, until {issued['expires_at']}; on the new host run:", stderr=True)
    output.print_line(f"  virtpool agent --server {url} --join {issued['token']}", stderr=True, wrapped=False)


def parse_duration_s(text: str) -> float:
    """'90s', '30m', '1h', '2d' (a plain number is seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        output.fail(f"cannot read the duration '{text}'", hint="e.g. 30m, 1h or 2d")
    if value <= 0:
        output.fail(f"'{text}' is not a duration", hint="e.g. 30m, 1h or 2d")
    return value


@app.command("add")
def add(
    name: str,
    cpus: Annotated[int, typer.Option(help="logical CPUs")],
    memory: Annotated[str, typer.Option(help="e.g. 64G")],
    disk: Annotated[str, typer.Option(help="e.g. 2T")],
    label_: Annotated[list[str] | None, typer.Option("--label", help="key=value; repeat")] = None,
    accel: Annotated[str, typer.Option(help="kvm or tcg")] = "kvm",
    json: JsonFlag = False,
) -> None:
    """Add an inventory row for a host whose agent is not connected yet (admin).

    Examples:

        virtpool host add node2 --cpus 16 --memory 64G --disk 1T

        virtpool host add node3 --cpus 8 --memory 32G --disk 500G --label rack=r2
    """
    try:
        memory_mib = parse_size_mib(memory, what="memory")
        disk_mib = parse_size_mib(disk, what="disk")
    except VirtpoolError as err:
        output.fail(err.message, hint=err.hint)
    with output.errors():
        host = client().add_host(name, cpus=cpus, memory_mib=memory_mib, disk_mib=disk_mib,
                                 labels=parse_labels(label_ or []), accel=accel)
    _show(host, json)


@app.command("remove")
def remove(name: HostName, json: JsonFlag = False) -> None:
    """Remove an inventory row that holds no VM (admin).

    Examples:

        virtpool host remove node2
    """
    with output.errors():
        client().remove_host(name)
    if json:
        return output.emit_json({"removed": name})
    output.print_line(f"host '{name}' removed")
