"""The top level of the Typer CLI: its options (--data-dir, --project, --version)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from virtpool import __version__
from virtpool.cli import common


def _version(value: bool) -> None:
    if value:
        typer.echo(f"virtpool {__version__}")
        raise typer.Exit()


def new_app(help_: str) -> typer.Typer:
    """A root app with the top-level options and no nouns yet (cli/main.py adds them)."""
    app = typer.Typer(help=help_, no_args_is_help=True, pretty_exceptions_enable=False)

    @app.callback()
    def main(
        data_dir: Annotated[Path | None, typer.Option(
            "--data-dir", envvar="VIRTPOOL_DATA_DIR",
            help="where `virtpool up` keeps its state (default /var/lib/virtpool as root)")] = None,
        project_name: Annotated[str | None, typer.Option(
            "--project", envvar="VIRTPOOL_PROJECT",
            help="the project to act in (pool admins; a project token acts in its own)")] = None,
        version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                              help="print the version and exit")] = False,
    ) -> None:
        common.set_data_dir(data_dir)
        common.set_project(project_name)

    return app
