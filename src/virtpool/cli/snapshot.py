"""`virtpool vm snapshot …`"""

from __future__ import annotations

from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.common import JsonFlag, client

app = typer.Typer(help="Snapshots of a VM's disk, and of its memory.", no_args_is_help=True)


@app.command("create")
def create(vm: str, name: str,
           memory: Annotated[bool, typer.Option("--memory", help="also save the running guest's memory")] = False,
           json: JsonFlag = False) -> None:
    """Snapshot a running or stopped VM (a running guest's filesystems are frozen for it).

    Examples:

        virtpool vm snapshot create web before-upgrade

        virtpool vm snapshot create web with-ram --memory
    """
    with output.errors():
        taken = client().create_snapshot(vm, name, memory=memory)
    if json:
        return output.emit_json(taken)
    kind = f"with {taken.memory_bytes / 2**20:.0f} MiB of memory" if taken.memory else "of its disk"
    output.out.print(f"snapshot '{taken.name}' of VM '{vm}' taken ({kind})", highlight=False)


@app.command("list")
def list_(vm: str, json: JsonFlag = False) -> None:
    """The VM's snapshots.

    Examples:

        virtpool vm snapshot list web

        virtpool vm snapshot list web --json
    """
    with output.errors():
        taken = client().snapshots(vm)
    if json:
        return output.emit_json(taken)
    output.table(["NAME", "MEMORY", "CREATED"],
                 [(s.name, f"{s.memory_bytes / 2**20:.0f}M" if s.memory else "-", s.created_at) for s in taken])


@app.command("restore")
def restore(vm: str, name: str, json: JsonFlag = False) -> None:
    """Put the VM back to a snapshot: stopped, or running for a memory snapshot.

    Examples:

        virtpool vm snapshot restore web before-upgrade
    """
    with output.errors():
        restored = client().restore_snapshot(vm, name)
    if json:
        return output.emit_json(restored)
    output.out.print(f"VM '{vm}' restored to snapshot '{name}'", highlight=False)


@app.command("delete")
def delete(vm: str, name: str, json: JsonFlag = False) -> None:
    """Delete a snapshot.

    Examples:

        virtpool vm snapshot delete web before-upgrade
    """
    with output.errors():
        client().delete_snapshot(vm, name)
    if json:
        return output.emit_json({"deleted": name})
    output.out.print(f"snapshot '{name}' of VM '{vm}' deleted", highlight=False)


def clone(source: str, name: str,
          snapshot: Annotated[str | None, typer.Option("--snapshot", help="clone this snapshot "
                                                       "(the source may run)")] = None,
          full: Annotated[bool, typer.Option("--full", help="an independent full copy (default: "
                                             "linked, copy-on-write over a shared base)")] = False,
          json: JsonFlag = False) -> None:
    """Make a new stopped VM from a stopped VM's disk, or from one of its snapshots.

    Linked by default: the clone's disk holds only what it writes, over a read-only base of the
    source's data that stays while any clone uses it (the source can be deleted). --full copies
    everything into a disk of the clone's own.

    Examples:

        virtpool vm clone web web-copy

        virtpool vm clone web web-at-v1 --snapshot v1

        virtpool vm clone web web-own --full
    """
    with output.errors():
        vm = client().clone_vm(source, name, snapshot=snapshot, full=full)
    if json:
        return output.emit_json(vm)
    output.out.print(f"VM '{vm.name}' cloned from '{source}'" + (f" (snapshot '{snapshot}')" if snapshot else "")
                     + (", full copy" if full else ", linked"), highlight=False)
