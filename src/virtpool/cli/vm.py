"""`virtpool vm …`"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.live import Live
from rich.table import Table

from virtpool.cli import backup, common, output, snapshot
from virtpool.cli import create as creating
from virtpool.cli.create import VM_FLAGS, WAIT_MARGIN_S
from virtpool.cli.common import ColumnsOption, JsonFlag, VMName, client
from virtpool.cli.operation import follow
from virtpool.model.cloudinit import (
    MAX_NETWORK_CONFIG,
    MAX_SSH_KEY,
    MAX_USER_DATA,
    CloudInit,
    check_ssh_public_key,
)
from virtpool.model.errors import InvalidRequest, VirtpoolError
from virtpool.model.operation import Operation
from virtpool.model.network import NicRequest
from virtpool.model.spec import ExecOutput
from virtpool.model.states import VMState
from virtpool.model.units import format_mib, parse_bytes, parse_cpu_list, parse_size_mib
from virtpool.model.vm import STOPPED_BY, VMInfo, VMStats
from virtpool.sdk import Client

app = typer.Typer(help="Virtual machines.", no_args_is_help=True)
app.add_typer(snapshot.app, name="snapshot")
app.add_typer(backup.app, name="backup")
app.command("restore-backup")(backup.restore)
app.command("clone")(snapshot.clone)

WaitTimeout = Annotated[float, typer.Option("--wait-timeout", help="seconds to wait for the VM to settle")]




def _report(vm: VMInfo, wanted: VMState, waited: bool, json: bool) -> None:
    if json:
        output.emit_json(vm)
    if waited and vm.state != wanted:
        output.fail(f"VM '{vm.name}' is {vm.state.value}: {vm.error or 'no details'}",
                    hint=f"see `virtpool vm logs {vm.name}`")
    if json:
        return
    how = f" ({STOPPED_BY[vm.stopped_by]})" if wanted == VMState.STOPPED and vm.stopped_by else ""
    output.print_line(f"VM '{vm.name}' is {output.state(vm.state.value)}{how}")
    if how and vm.stopped_by == "killed":
        output.note("[yellow]warning:[/] the guest did not shut down cleanly; its disk may need a check")


def _follow(api: Client, op: Operation, wanted: VMState, wait: bool, timeout: float, json: bool) -> None:
    """Follow a VM operation (with --wait), then show the VM as it ended up. A boot is waited
    for at least as long as the server lets it take."""
    if wait:
        if wanted == VMState.RUNNING:
            allowed = api.vm(op.target or "").boot_timeout_s or 0
            timeout = max(timeout, allowed + WAIT_MARGIN_S)
        op = follow(api, op, timeout, json)
    elif not json:
        output.note(f"operation {op.id}: follow it with `virtpool operation show {op.id} --wait`")
    _report(api.vm(op.target or ""), wanted, wait, json)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="the new VM's name", show_default=False)],
    image: Annotated[str, typer.Option(help="image name (`virtpool image list`)")] = "default",
    cpus: Annotated[int, typer.Option(help="vCPUs")] = 1,
    memory: Annotated[str, typer.Option(help="e.g. 256M, 2G")] = "256M",
    disk: Annotated[str, typer.Option(help="root disk size, e.g. 1G")] = "1G",
    port: Annotated[list[str] | None, typer.Option(help="HOST:GUEST TCP forward on 127.0.0.1; repeat")] = None,
    kernel_args: Annotated[str, typer.Option("--kernel-args", help="extra kernel command line")] = "",
    accel: Annotated[str, typer.Option(help="auto, kvm or tcg")] = "auto",
    max_memory: Annotated[str | None, typer.Option(help="ceiling the balloon can grow it to while it runs")] = None,
    cpu_cap: Annotated[int | None, typer.Option(help="cap on host CPU time, % of one CPU")] = None,
    cpu_weight: Annotated[int, typer.Option(help="CPU share under contention (100 = normal)")] = 100,
    disk_iops: Annotated[int | None, typer.Option(help="I/O operations per second limit")] = None,
    disk_bps: Annotated[str | None, typer.Option(help="disk bytes per second limit, e.g. 50M")] = None,
    cpu_affinity: Annotated[str | None, typer.Option(help="host CPUs to run on, e.g. 0,2-3")] = None,
    group: Annotated[str | None, typer.Option(help="placement group (`virtpool group list`)")] = None,
    host: Annotated[str | None, typer.Option(
        help="run it on this host (`virtpool host list`); refused, with the reason, if it does not fit")] = None,
    require_label: Annotated[list[str] | None, typer.Option(
        "--require-label", help="only hosts with this key=value label; repeat")] = None,
    weigher: Annotated[str | None, typer.Option(
        help="rank hosts by spread, pack or balanced (default: the pool's)")] = None,
    network: Annotated[list[str] | None, typer.Option(
        help="a NIC on this network: NAME or NAME,ip=ADDRESS; repeat for several")] = None,
    secgroup: Annotated[list[str] | None, typer.Option(
        help="a security group filtering its NICs; repeat for several")] = None,
    boot_timeout: Annotated[float | None, typer.Option(
        help="seconds its boots may take to answer the guest agent (default: the image's)")] = None,
    from_snapshot: Annotated[str | None, typer.Option(
        "--from-snapshot", help="SOURCE:SNAPSHOT, a memory snapshot of a VM, stopped or running "
        "(paused for the copy of its disk): the new VM (its shape, its disk) starts from it instead of booting")] = None,
    cloud_init: Annotated[Path | None, typer.Option(
        "--cloud-init", help="cloud-init user-data file ('#cloud-config' YAML or a script)")] = None,
    ssh_key: Annotated[list[Path] | None, typer.Option(
        "--ssh-key", help="an SSH public key file for the image's default user; repeat")] = None,
    hostname: Annotated[str | None, typer.Option(help="the guest's hostname (default: NAME)")] = None,
    network_config: Annotated[Path | None, typer.Option(
        "--network-config", help="cloud-init network config v1/v2 file (default: DHCP)")] = None,
    start: Annotated[bool, typer.Option("--start", help="boot it at once")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="with --start: wait until the guest answers")] = False,
    wait_timeout: WaitTimeout = 180.0,
    json: JsonFlag = False,
) -> None:
    """Create a VM (and with --start, boot it) on the host the scheduler picks.

    Examples:

        virtpool vm create web --memory 512M --disk 2G --port 8080:80 --start --wait

        virtpool vm create db --memory 1G --max-memory 2G --cpu-cap 150 --group web

        virtpool vm create web2 --from-snapshot web:warm --start --wait

        virtpool vm create deb --image debian-12 --memory 1G --cloud-init user-data.yaml
        --ssh-key ~/.ssh/id_ed25519.pub --start --wait
    """
    from virtpool.cli.host import parse_labels

    if from_snapshot is not None:
        shaped = {"--image": image != "default", "--cpus": cpus != 1, "--memory": memory != "256M",
                  "--disk": disk != "1G", "--port": bool(port), "--network": bool(network),
                  "--kernel-args": bool(kernel_args), "--max-memory": max_memory is not None,
                  "--cloud-init": cloud_init is not None, "--ssh-key": bool(ssh_key),
                  "--hostname": hostname is not None, "--network-config": network_config is not None}
        given = [flag for flag, set_ in shaped.items() if set_]
        if given:
            output.fail(f"{', '.join(given)} cannot be given with --from-snapshot: the VM resumes the "
                        "snapshot's guest, with its source's image, shape and disk",
                        hint="leave them out (resize the VM after its start)")
        _create_from_snapshot(name, from_snapshot, start=start, wait=wait, wait_timeout=wait_timeout, json=json)
        return
    with output.errors(VM_FLAGS):
        try:
            limits = {
                "max_memory_mib": parse_size_mib(max_memory, what="max memory") if max_memory else None,
                "cpu_cap_pct": cpu_cap, "cpu_weight": cpu_weight, "disk_iops": disk_iops,
                "disk_bps": parse_bytes(disk_bps, what="disk bps") if disk_bps else None,
                "cpu_affinity": parse_cpu_list(cpu_affinity) if cpu_affinity else None,
            }
            seed = _cloud_init(cloud_init, ssh_key or [], hostname, network_config)
            nics = [NicRequest.fields(n) for n in network or []]
        except VirtpoolError as err:
            output.fail(err.message, hint=err.hint)
    # The same request and the same follow as the fast path's (cli/create.py), more flags read.
    fields = creating.body(name, image=image, cpus=cpus, memory=memory, disk=disk, ports=port or [],
                           kernel_args=kernel_args, accel=accel, start=start, host=host,
                           boot_timeout=boot_timeout, **limits, group=group, weigher=weigher,
                           required_labels=parse_labels(require_label or []), networks=nics,
                           secgroups=secgroup or [],
                           **({"cloud_init": seed.model_dump()} if seed is not None else {}))
    creating.create(fields, wait=wait, wait_timeout=wait_timeout, json=json, data_dir=common.data_dir(),
                    project=common.project())


def _create_from_snapshot(name: str, ref: str, *, start: bool, wait: bool, wait_timeout: float,
                          json: bool) -> None:
    """The VM takes the source's shape and the snapshot's disk; its first start resumes the
    snapshot's guest (a fraction of a boot), with its own name as hostname."""
    source, sep, snapshot = ref.partition(":")
    if not sep or not source or not snapshot:
        output.fail(f"cannot read --from-snapshot '{ref}'", hint="write SOURCE:SNAPSHOT, e.g. web:warm")
    with output.errors():
        api = client()
        vm = api.clone_vm(source, name, snapshot=snapshot, memory=True)
        if start:
            _follow(api, api.start_vm(vm.name), VMState.RUNNING, wait, wait_timeout, json)
            return
    if json:
        return output.emit_json(vm)
    output.print_line(f"VM '{vm.name}' created from snapshot '{snapshot}' of VM '{source}' on host "
                      f"'{vm.host}' ({output.state(vm.state.value)}); its first start resumes the snapshot")
def _read_text(path: Path, flag: str, limit: int) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as err:
        raise InvalidRequest(f"{flag} {path}: {err.strerror}") from None
    if len(data) > limit:
        raise InvalidRequest(f"{flag} {path} is over {limit // 1024} KiB",
                             hint="a cloud-init seed carries configuration, not files")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InvalidRequest(f"{flag} {path} is not UTF-8 text") from None


def _cloud_init(user_data: Path | None, keys: list[Path], hostname: str | None,
                network_config: Path | None) -> CloudInit | None:
    """The seed's user part from the files named, checked here (so that a bad file is said
    with its flag and nothing is sent); None when no cloud-init flag was given."""
    from pydantic import ValidationError

    if user_data is None and not keys and hostname is None and network_config is None:
        return None
    fields = {
        "user_data": _read_text(user_data, "--cloud-init", MAX_USER_DATA) if user_data else None,
        "network_config": (_read_text(network_config, "--network-config", MAX_NETWORK_CONFIG)
                           if network_config else None),
        "ssh_keys": [],
        "hostname": hostname,
    }
    for key in keys:
        try:
            fields["ssh_keys"].append(check_ssh_public_key(_read_text(key, "--ssh-key", MAX_SSH_KEY)))
        except ValueError as err:
            raise InvalidRequest(f"--ssh-key {key}: {err}") from None
    try:
        return CloudInit(**fields)
    except ValidationError as err:
        flags = {"user_data": f"--cloud-init {user_data}", "network_config": f"--network-config {network_config}",
                 "ssh_keys": "--ssh-key", "hostname": "--hostname"}
        first = err.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"{flags.get(field, field)}: {message}") from None


@app.command("list")
def list_(all_projects: Annotated[bool, typer.Option(
              "--all-projects", help="every project's VMs (pool admins)")] = False,
          columns: ColumnsOption = None,
          json: JsonFlag = False) -> None:
    """The project's VMs, with their address, host and uptime.

    Columns (-c): n name, s state, 4 address, h host, p project, u uptime, c cpus,
    m memory, d disk, i image, P ports, I id.

    Narrow terminals drop the least important columns first.

    Examples:

        virtpool vm list

        virtpool vm list -c ns4u

        virtpool vm list --json | jq -r '.[].name'
    """
    from virtpool.cli import common, fast

    fast.vm_list(all_projects=all_projects, json=json, columns=columns, data_dir=common.data_dir(),
                 project=common.project())


@app.command("show")
def show(name: VMName, json: JsonFlag = False) -> None:
    """One VM.

    Examples:

        virtpool vm show web

        virtpool vm show web --json
    """
    with output.errors():
        api = client()
        vm = api.vm(name)
        image = api.image(vm.image)  # an image in use cannot be deleted
    if json:
        return output.emit_json(vm)
    output.fields([
        ("name", vm.name), ("id", vm.id), ("state", output.state(vm.state.value)),
        ("image", vm.image), ("cpus", vm.cpus), ("memory", format_mib(vm.memory_mib)),
        ("disk", format_mib(vm.disk_mib)), ("ports", ", ".join(map(str, vm.ports)) or "-"),
        ("kernel args", vm.kernel_args or "-"), ("accelerator", vm.accel), ("host", vm.host),
        ("machine", image.machine + (f" ({image.firmware})" if image.firmware else "")),
        ("boot timeout", f"{vm.boot_timeout_s:g}s" if vm.boot_timeout_s else "-"),
        ("last stop", STOPPED_BY[vm.stopped_by] if vm.stopped_by else "-"),
        ("cloud-init", _seed_summary(vm)),
        ("created", vm.created_at), ("error", vm.error or "-"),
    ])
    if vm.nics:
        output.fields([("security groups", ", ".join(vm.secgroups) or "- (the network's default)")])
        output.table(["NIC", "NETWORK", "MAC", "ADDRESS"],
                     [(f"net{i}", n.network, n.mac, n.address) for i, n in enumerate(vm.nics)])


@app.command("set")
def set_(
    name: VMName,
    secgroup: Annotated[list[str] | None, typer.Option(
        help="its security groups become these (repeat for several); applied live")] = None,
    no_secgroup: Annotated[bool, typer.Option(
        "--no-secgroup", help="take it out of every security group")] = False,
    json: JsonFlag = False,
) -> None:
    """Change a VM's settings while it runs: its security groups.

    Examples:

        virtpool vm set web --secgroup web --secgroup ssh

        virtpool vm set web --no-secgroup
    """
    if no_secgroup == bool(secgroup):
        output.fail("give --secgroup NAME (repeatable) or --no-secgroup", code=output.EXIT_USAGE)
    with output.errors(VM_FLAGS):
        vm = client().set_vm_secgroups(name, secgroup or [])
    if json:
        return output.emit_json(vm)
    output.print_line(f"VM '{vm.name}' security groups: {', '.join(vm.secgroups) or 'none'}")


def _seed_summary(vm: VMInfo) -> str:
    """What the VM's seed carries beyond its instance-id (its id), in one line."""
    seed = vm.cloud_init
    if seed is None:
        return "-"
    parts = [f"hostname {seed.hostname or vm.name}", f"{len(seed.ssh_keys)} SSH key(s)"]
    if seed.user_data:
        parts.append(f"user-data {len(seed.user_data.encode())} bytes")
    if seed.network_config:
        parts.append("own network config")
    return ", ".join(parts)


def _action(name: str, action: str, wanted: VMState, wait: bool, wait_timeout: float,
            json: bool, **params: float | bool) -> None:
    with output.errors():
        api = client()
        op = getattr(api, f"{action}_vm")(name, **params)
        _follow(api, op, wanted, wait, wait_timeout, json)


NoWait = Annotated[bool, typer.Option("--wait/--no-wait", help="wait until it has settled")]
StopTimeout = Annotated[float, typer.Option("--timeout", help="seconds for a graceful stop before a hard one")]
# After its graceful --timeout the server still kills the QEMU and records it: the wait covers that.
HARD_STOP_SLACK_S = 30.0


@app.command("start")
def start(name: VMName, wait: NoWait = True, wait_timeout: WaitTimeout = 180.0, json: JsonFlag = False) -> None:
    """Boot a VM; waits until its guest agent answers.

    Examples:

        virtpool vm start web

        virtpool vm start web --no-wait --json
    """
    _action(name, "start", VMState.RUNNING, wait, wait_timeout, json)


@app.command("stop")
def stop(name: VMName, timeout: StopTimeout = 30.0,
         force: Annotated[bool, typer.Option("--force", help="stop it hard at once (as pulling the plug)")] = False,
         wait: NoWait = True, wait_timeout: WaitTimeout = 180.0, json: JsonFlag = False) -> None:
    """Shut a VM down: gracefully through its guest agent or ACPI, then hard after --timeout.

    Examples:

        virtpool vm stop web

        virtpool vm stop web --force
    """
    # Never give up on a stop the server is still allowed to be carrying out.
    _action(name, "stop", VMState.STOPPED, wait, max(wait_timeout, timeout + HARD_STOP_SLACK_S), json,
            timeout=timeout, force=force)


@app.command("restart")
def restart(name: VMName, timeout: StopTimeout = 30.0, wait: NoWait = True,
            wait_timeout: WaitTimeout = 180.0, json: JsonFlag = False) -> None:
    """Stop and boot again.

    Examples:

        virtpool vm restart web

        virtpool vm restart web --timeout 60 --wait-timeout 300
    """
    _action(name, "restart", VMState.RUNNING, wait, max(wait_timeout, timeout + HARD_STOP_SLACK_S), json,
            timeout=timeout)


@app.command("pause")
def pause(name: VMName, json: JsonFlag = False) -> None:
    """Freeze a VM's vCPUs (memory is kept).

    Examples:

        virtpool vm pause web
    """
    with output.errors():
        vm = client().pause_vm(name)
    _report(vm, VMState.PAUSED, False, json)


@app.command("resume")
def resume(name: VMName, json: JsonFlag = False) -> None:
    """Continue a paused VM.

    Examples:

        virtpool vm resume web
    """
    with output.errors():
        vm = client().resume_vm(name)
    _report(vm, VMState.RUNNING, False, json)


@app.command("delete")
def delete(name: VMName, force: Annotated[bool, typer.Option("--force", help="stop it hard first if it runs")] = False,
           json: JsonFlag = False) -> None:
    """Delete a VM and its disk.

    Examples:

        virtpool vm delete web

        virtpool vm delete web --force
    """
    with output.errors():
        client().delete_vm(name, force=force)
    if json:
        return output.emit_json({"deleted": name})
    output.print_line(f"VM '{name}' deleted")


@app.command("resize")
def resize(
    name: VMName,
    memory: Annotated[str | None, typer.Option(help="memory via the balloon, up to --max-memory")] = None,
    max_memory: Annotated[str | None, typer.Option(help="ceiling (VM stopped only)")] = None,
    cpus: Annotated[int | None, typer.Option(help="vCPUs, from the next boot")] = None,
    cpu_cap: Annotated[int | None, typer.Option(help="% of one host CPU; 0 removes the cap")] = None,
    cpu_weight: Annotated[int | None, typer.Option(help="share under contention, 100 = normal")] = None,
    disk_iops: Annotated[int | None, typer.Option(help="I/O operations per second; 0 = unlimited")] = None,
    disk_bps: Annotated[str | None, typer.Option(help="bytes per second, e.g. 20M; 0 = unlimited")] = None,
    disk_size: Annotated[str | None, typer.Option(help="grow the disk, e.g. 2G (the guest sees it live)")] = None,
    cpu_affinity: Annotated[str | None, typer.Option(help="host CPUs to run on, e.g. 0,2-3; 'any' clears")] = None,
    json: JsonFlag = False,
) -> None:
    """Change a VM's resources, live where the hypervisor allows it.

    Examples:

        virtpool vm resize db --memory 768M

        virtpool vm resize db --cpu-cap 50 --disk-bps 20M
    """
    with output.errors({**VM_FLAGS, "disk_mib": "--disk-size"}):
        try:
            changes: dict[str, int | None] = {
                "memory_mib": parse_size_mib(memory, what="memory") if memory else None,
                "max_memory_mib": parse_size_mib(max_memory, what="max memory") if max_memory else None,
                "cpus": cpus, "cpu_cap_pct": cpu_cap, "cpu_weight": cpu_weight, "disk_iops": disk_iops,
                "disk_bps": parse_bytes(disk_bps, what="disk bps") if disk_bps is not None else None,
                "disk_mib": parse_size_mib(disk_size, what="disk size") if disk_size else None,
                "cpu_affinity": parse_cpu_list(cpu_affinity) if cpu_affinity else None,
            }
        except VirtpoolError as err:
            output.fail(err.message, hint=err.hint)
        result = client().resize_vm(name, **{k: v for k, v in changes.items() if v is not None})
    if json:
        return output.emit_json(result)
    vm = result.vm
    output.out.print(
        f"VM '{vm.name}': {format_mib(vm.memory_mib)} of {format_mib(vm.max_memory_mib)} memory, "
        f"{vm.cpus} vCPUs, CPU cap {f'{vm.cpu_cap_pct}%' if vm.cpu_cap_pct else 'none'}, "
        f"weight {vm.cpu_weight}, disk {format_mib(vm.disk_mib)}"
        f" ({vm.disk_iops or 'unlimited'} IOPS, {vm.disk_bps or 'unlimited'} B/s)", highlight=False)
    for note in result.notes:
        output.note(f"[yellow]note:[/] {note}")


def stats_rows(stats: list[VMStats]) -> list[tuple[object, ...]]:
    def num(value: float | None, unit: str = "") -> str:
        return "-" if value is None else f"{value:g}{unit}"

    return [(s.name, output.state(s.state), num(s.cpu_percent, "%"), num(s.balloon_mib, "M"),
             num(s.guest_free_mib, "M"), num(s.qemu_rss_mib, "M"),
             num(None if s.disk_read_bytes is None else round(s.disk_read_bytes / 2**20, 1), "M"),
             num(None if s.disk_written_bytes is None else round(s.disk_written_bytes / 2**20, 1), "M"))
            for s in stats]


STATS_COLUMNS = ["NAME", "STATE", "CPU", "MEMORY", "GUEST FREE", "QEMU RSS", "DISK READ", "DISK WRITTEN"]


@app.command("stats")
def stats(name: VMName, watch: Annotated[bool, typer.Option("--watch", help="refresh every second")] = False,
          json: JsonFlag = False) -> None:
    """CPU, memory, disk use of a VM (network: not counted by user-mode networking).

    Examples:

        virtpool vm stats web

        virtpool vm stats web --watch
    """
    with output.errors():
        api = client()
        if json and watch:  # a stream: JSON Lines, one object a second
            try:
                while True:
                    output.emit_jsonl(api.vm_stats(name))
                    time.sleep(1)
            except KeyboardInterrupt:
                return
        if json:
            return output.emit_json(api.vm_stats(name))
        live_table(lambda: [api.vm_stats(name)], watch)


def live_table(fetch: Callable[[], list[VMStats]], watch: bool) -> None:
    """Print the stats table once, or keep it refreshed until Ctrl-C."""
    def render() -> Table:
        grid = Table(header_style="bold")
        for column in STATS_COLUMNS:
            grid.add_column(column)
        for row in stats_rows(fetch()):
            grid.add_row(*map(str, row))
        return grid

    if not watch:
        output.out.print(render())
        return
    try:
        with Live(render(), console=output.out, refresh_per_second=4) as live:
            while True:
                time.sleep(1)
                live.update(render())
    except KeyboardInterrupt:
        pass


@app.command("exec")
def exec_(
    name: VMName,
    command: Annotated[list[str], typer.Argument(help="the command and its arguments, after --",
                                                 show_default=False)],
    timeout: Annotated[float, typer.Option(help="seconds before the command is killed (exit 5)")] = 60.0,
    json: JsonFlag = False,
) -> None:
    """Run a command in the guest; print its output and exit with its exit code.

    Everything before -- is for virtpool, everything after it is the command. Input piped
    into virtpool streams to the command's stdin while it runs; its output is printed as it
    is written. A command still running after --timeout is killed in the guest and virtpool
    exits 5.

    Examples:

        virtpool vm exec web -- uname -a

        virtpool vm exec web --timeout 5 -- sleep 10

        echo hello | virtpool vm exec web -- cat
    """
    if not command:
        output.usage_error("no command given", hint=f"e.g. `virtpool vm exec {name} -- uname -a`")
    # A terminal is not input: only a pipe or a file is sent (as `docker exec -i` would).
    piped = sys.stdin is not None and not sys.stdin.isatty()
    with output.errors():
        if json:  # one document: the whole output with the exit code
            result = client().exec(name, command, timeout=timeout, stdin=sys.stdin.buffer.read() if piped else None)
            output.emit_json(result)
            raise typer.Exit(result.exit_code)
        # Piped input streams to the command while it runs, its output streams back.
        data = (b"" if _is_dev_null(sys.stdin) else _chunks(sys.stdin)) if piped else None
        for item in client().exec_stream(name, command, timeout=timeout, stdin=data):
            if isinstance(item, ExecOutput):
                stream = sys.stdout if item.stream == "stdout" else sys.stderr
                stream.buffer.write(item.data)
                stream.flush()
            else:
                raise typer.Exit(item.exit_code)
    output.fail("the server ended the command's output without its exit code", output.EXIT_SERVER)


def _is_dev_null(stream: TextIO) -> bool:
    """/dev/null (a cron job's, a script's `</dev/null`): no input, nothing to stream."""
    try:
        return os.path.samestat(os.fstat(stream.fileno()), os.stat(os.devnull))
    except OSError:
        return False


def _chunks(stream: TextIO) -> Iterator[bytes]:
    """What a pipe brings, as it is written (a read returns what is there, up to 64 KiB)."""
    fd = stream.fileno()
    while chunk := os.read(fd, 64 * 1024):
        yield chunk


@app.command("logs")
def logs(name: VMName, follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new output")] = False,
         json: JsonFlag = False) -> None:
    """The VM's serial console output.

    Examples:

        virtpool vm logs web

        virtpool vm logs web --follow
    """
    with output.errors():
        api = client()
        data, offset = api.logs(name)
        if json:
            return output.emit_json({"name": name, "log": data.decode(errors="replace"), "next_offset": offset})
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        try:
            while follow:
                time.sleep(0.3)
                data, offset = api.logs(name, offset)
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass


@app.command("console")
def console(name: VMName) -> None:
    """Attach to the serial console. Ctrl-] detaches.

    Examples:

        virtpool vm console web
    """
    from virtpool.cli.console import attach

    with output.errors():
        api = client()
        vm = api.vm(name)
    attach(api.url, api.token, vm.name, api.project, tls=api.tls())
