"""What every CLI command shares: the --json flag and the client for the configured platform."""

from __future__ import annotations

from collections.abc import Callable
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
    found = config.target(_state["data_dir"])
    return Client(found.url, found.token, project=project(), trust=found.trust)


def _complete(path: str, key: str = "name") -> Callable[[str], list[str]]:
    """Shell completion from the API: the names under ``path`` that start with what was typed.
    Silent (no candidates) when the platform cannot be reached: a completion never prints errors."""
    def complete(incomplete: str) -> list[str]:
        try:
            from virtpool.cli.fast import Call

            items = Call(_state["data_dir"], project()).get(path, {"limit": 1000}).json()
        except Exception:  # any failure: offer nothing rather than break the shell's line
            return []
        return sorted(str(i[key]) for i in items if str(i.get(key, "")).startswith(incomplete))

    return complete


VMName = Annotated[str, typer.Argument(help="the VM's name (or id)", autocompletion=_complete("/vms"),
                                       show_default=False)]
ImageName = Annotated[str, typer.Argument(help="the image's name", autocompletion=_complete("/images"))]
HostName = Annotated[str, typer.Argument(help="the host's name", autocompletion=_complete("/hosts"))]
ProjectName = Annotated[str, typer.Argument(help="the project's name", autocompletion=_complete("/projects"))]
