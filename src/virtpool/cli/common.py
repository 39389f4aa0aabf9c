"""What every CLI command shares: the --json flag and the client for the configured platform."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from virtpool.cli import config
from virtpool.sdk.client import Client

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON, for scripts.")]
ColumnsOption = Annotated[str | None, typer.Option(
    "--columns", "-c", help="the columns to show: names (name,state,host) or one-letter keys (nsh)")]

_state: dict[str, Path | None] = {"data_dir": None}
_project: dict[str, str | None] = {"name": None}


def set_data_dir(path: Path | None) -> None:
    _state["data_dir"] = path


def set_project(name: str | None) -> None:
    """The project commands act in (`virtpool --project P …`); None: the token's own, or 'default'."""
    _project["name"] = name


def project() -> str | None:
    return _project["name"]


def data_dir() -> Path:
    return _state["data_dir"] or config.default_data_dir()


def client() -> Client:
    directory = data_dir()
    return Client(config.api_url(directory), config.api_token(directory), project=project())
