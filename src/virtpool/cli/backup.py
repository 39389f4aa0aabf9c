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


def _on_host(source: Path, host: str | None) -> str:
    """A directory of this machine is made absolute here; one of another host (--host) is
    passed as written: it names a path there."""
    return str(source) if host is not None else str(source.resolve())


def _show(chain: BackupInfo) -> None:
    output.table(["FILE", "KIND", "SIZE", "CREATED"],
                 [(f.file, f.kind, f"{f.bytes / 2**20:.1f}M", f.created_at) for f in chain.files])


@app.command("create")
def create(name: str,
           to: Annotated[Path, typer.Option("--to", help="directory on the host: empty or new for a full backup")],
           incremental: Annotated[bool, typer.Option("--incremental", help="only what changed since the last "
                                                     "backup into --to")] = False,
           json: JsonFlag = False) -> None:
    """Back a running VM's disk up while its guest keeps running.

    Examples:

        virtpool vm backup create web --to /srv/backups/web

        virtpool vm backup create web --to /srv/backups/web --incremental
    """
    with output.errors():
        chain = client().backup_vm(name, str(to.resolve()), incremental=incremental)
    if json:
        return output.emit_json(chain)
    newest = chain.files[-1]
    output.out.print(f"VM '{name}' backed up into {to}: {newest.file} ({newest.kind}, "
                     f"{newest.bytes / 2**20:.1f} MiB)", highlight=False)


OnHost = Annotated[str | None, typer.Option(
    "--host", help="the host whose directory it is (default: the server's own host)")]


@app.command("list")
def list_(source: Path, host: OnHost = None, json: JsonFlag = False) -> None:
    """The backup chain in a directory.

    Examples:

        virtpool vm backup list /srv/backups/web
    """
    with output.errors():
        chain = client().backup_chain(_on_host(source, host), host=host)
    if json:
        return output.emit_json(chain)
    output.out.print(f"backups of VM '{chain.vm}' (image {chain.image}):", highlight=False)
    _show(chain)


def restore(source: Path, name: str, host: OnHost = None, json: JsonFlag = False) -> None:
    """Make a new stopped VM from the newest state of a backup chain (on --host: made there).

    Examples:

        virtpool vm restore-backup /srv/backups/web web-restored
    """
    with output.errors():
        vm = client().restore_backup(_on_host(source, host), name, host=host)
    if json:
        return output.emit_json(vm)
    output.out.print(f"VM '{vm.name}' restored from {source} ({output.state(vm.state.value)})")
