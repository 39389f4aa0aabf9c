"""`virtpool vm backup …` and `virtpool vm restore-backup`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.common import JsonFlag, client
from virtpool.model.backup import BackupInfo

app = typer.Typer(help="Backups of running VMs into a directory (full, then incrementals).",
                  no_args_is_help=True)


def _show(chain: BackupInfo) -> None:
    output.table(["FILE", "KIND", "SIZE", "CREATED"],
                 [(f.file, f.kind, f"{f.bytes / 2**20:.1f}M", f.created_at) for f in chain.files])


@app.command("create")
def create(name: str,
           to: Annotated[Path, typer.Option("--to", help="directory on the host: empty or new for a full backup")],
           incremental: Annotated[bool, typer.Option("--incremental", help="only what changed since the last "
                                                     "backup into --to")] = False,
           json: JsonFlag = False) -> None:
    """Back a running VM's disk up while its guest keeps running."""
    with output.errors():
        chain = client().backup_vm(name, str(to.resolve()), incremental=incremental)
    if json:
        return output.emit_json(chain)
    newest = chain.files[-1]
    output.out.print(f"VM '{name}' backed up into {to}: {newest.file} ({newest.kind}, "
                     f"{newest.bytes / 2**20:.1f} MiB)", highlight=False)


@app.command("list")
def list_(source: Path, json: JsonFlag = False) -> None:
    """The backup chain in a directory."""
    with output.errors():
        chain = client().backup_chain(str(source.resolve()))
    if json:
        return output.emit_json(chain)
    output.out.print(f"backups of VM '{chain.vm}' (image {chain.image}):", highlight=False)
    _show(chain)


def restore(source: Path, name: str, json: JsonFlag = False) -> None:
    """Make a new stopped VM from the newest state of a backup chain."""
    with output.errors():
        vm = client().restore_backup(str(source.resolve()), name)
    if json:
        return output.emit_json(vm)
    output.out.print(f"VM '{vm.name}' restored from {source} ({output.state(vm.state.value)})")
