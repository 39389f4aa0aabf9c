"""Commands that run without Typer, pydantic, Rich or httpx: the reads people type most.

`virtpool vm list` must answer in 0.2 s from a cold start; importing Typer alone takes about
half of that. The commands here read JSON over the SDK's standard-library transport
(sdk/transport.py) and print it with cli/output.py. The dispatcher (cli/main.py) sends a
command line here only when it is one of these commands with options this module reads
(``--json``, ``-c/--columns``, ``--all-projects``); anything else (``--help`` included) goes
to the Typer command of the same name, which calls the same function below, so there is one
implementation of each command.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from virtpool.cli import output
from virtpool.cli.output import Column
from virtpool.model.units import format_mib  # pure: imports only model.errors


def uptime(started_at: str | None, now: datetime | None = None) -> str:
    """'3d4h', '2h05m', '4m12s' since ``started_at`` (ISO), '-' when not running."""
    if not started_at:
        return "-"
    start = datetime.fromisoformat(started_at)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    seconds = max(int(((now or datetime.now(UTC)) - start).total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


# -- the platform, as configured ---------------------------------------------------------------


class Call:
    """One API connection for a fast command: URL and token as the CLI finds them."""

    def __init__(self, data_dir: Path | None, project: str | None) -> None:
        from virtpool.cli import config
        from virtpool.sdk.tls import context, refuse_clear_text
        from virtpool.sdk.transport import StdlibTransport

        found = config.target(data_dir)
        self.url = found.url.rstrip("/")
        refuse_clear_text(self.url)
        self.project = project
        self.trust = found.trust
        self._transport = StdlibTransport(
            self.url + "/api/v1", {"Authorization": f"Bearer {found.token}"}, 60.0,
            tls=context(found.trust) if self.url.startswith("https://") else None)

    def get(self, path: str, params: dict[str, Any]) -> Any:
        """The answer's JSON and headers; a refusal raises the SDK's error for it."""
        from virtpool.sdk.errors import UntrustedServer, error_class, raise_for_problem
        from virtpool.sdk.tls import explain_refusal
        from virtpool.sdk.transport import CertificateRefused, TransportError

        if self.project:
            params = {**params, "project": self.project}
        try:
            response = self._transport.request("GET", path, params=params)
        except CertificateRefused as err:
            message, hint = explain_refusal(self.url, self.trust, err.ssl_error)
            raise UntrustedServer(0, "untrusted server", message, hint) from err
        except TransportError as err:
            raise error_class(0, {})(0, "unreachable", f"cannot reach virtpool at {self.url}: {err}",
                                     "is `virtpool up` running? check VIRTPOOL_URL") from err
        raise_for_problem(response)
        return response


def _pages(call: Call, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    response = call.get(path, {**params, "limit": 1000})
    items = list(response.json())
    while (following := response.links.get("next", {}).get("url")):
        after = parse_qs(urlsplit(following).query).get("after", [None])[0]
        response = call.get(path, {**params, "limit": 1000, "after": after})
        items += response.json()
    return items


# -- vm list -----------------------------------------------------------------------------------

VM_COLUMNS = (
    Column("NAME", "n"),
    Column("STATE", "s", min_width=5),
    Column("ADDRESS", "4", drop=3, shrink=True, min_width=9),
    Column("HOST", "h", drop=5, shrink=True, min_width=6),
    Column("PROJECT", "p", drop=6, shrink=True, min_width=7),
    Column("UPTIME", "u", drop=4, align="right"),
    Column("CPUS", "c", drop=7, align="right"),
    Column("MEMORY", "m", drop=8, align="right"),
    Column("DISK", "d", drop=9, align="right"),
    Column("IMAGE", "i", drop=10, shrink=True),
    Column("PORTS", "P", drop=11, shrink=True),
    Column("ID", "I", drop=12),
)
VM_DEFAULT = "ns4hpucmdiP"


def _ports(vm: dict[str, Any]) -> str:
    return ",".join(f"{p['host']}:{p['guest']}" for p in vm.get("ports") or []) or "-"


def vm_rows(vms: list[dict[str, Any]]) -> list[list[str]]:
    return [[vm["name"], output.state(vm["state"]), vm.get("address") or "-", vm.get("host") or "-",
             vm.get("project") or "-", uptime(vm.get("started_at")), str(vm["cpus"]),
             format_mib(vm["memory_mib"]), format_mib(vm["disk_mib"]), vm.get("image") or "-",
             _ports(vm), vm["id"]] for vm in vms]


def vm_list(*, all_projects: bool, json: bool, columns: str | None,
            data_dir: Path | None = None, project: str | None = None) -> None:
    """`virtpool vm list`: one implementation for the fast path and the Typer command."""
    with output.errors():
        vms = _pages(Call(data_dir, project), "/vms", {"all_projects": all_projects})
    if json:
        return output.emit_json(vms)
    output.table(VM_COLUMNS, vm_rows(vms), chosen=columns, default=VM_DEFAULT)


# -- reading the command line --------------------------------------------------------------------

Runner = Callable[[dict[str, Any]], None]
# (noun, verb) -> flags (option -> key), value options (option -> key), the runner
FAST: dict[tuple[str, str], tuple[dict[str, str], dict[str, str], Runner]] = {
    ("vm", "list"): ({"--all-projects": "all_projects", "--json": "json"},
                     {"--columns": "columns", "-c": "columns"},
                     lambda o: vm_list(all_projects=o.get("all_projects", False), json=o.get("json", False),
                                       columns=o.get("columns"), data_dir=o.get("data_dir"),
                                       project=o.get("project"))),
}
GLOBAL = {"--data-dir": "data_dir", "--project": "project"}


def parse(args: list[str]) -> tuple[Runner, dict[str, Any]] | None:
    """The fast command and its options for ``args``, or None when Typer should read them."""
    words: list[str] = []
    options: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            words.append(arg)
            if len(words) > 2:
                return None  # an argument none of these commands takes
            i += 1
            continue
        if len(words) == 1:
            return None  # an option between noun and verb
        if words:
            spec = FAST.get((words[0], words[1]))
            if spec is None:
                return None
            flags, values = spec[0], spec[1]
        else:
            flags, values = {}, GLOBAL
        name, eq, inline = arg.partition("=")
        if name in flags and not eq:
            options[flags[name]] = True
            i += 1
        elif name in values and (eq or i + 1 < len(args)):
            options[values[name]] = inline if eq else args[i + 1]
            i += 1 if eq else 2
        else:
            return None  # --help, or anything else: Typer answers
    spec = FAST.get((words[0], words[1])) if len(words) == 2 else None
    if spec is None:
        return None
    options.setdefault("project", os.environ.get("VIRTPOOL_PROJECT") or None)
    if "data_dir" in options:
        options["data_dir"] = Path(options["data_dir"])
    return spec[2], options


def run(args: list[str]) -> int | None:
    """Run ``args`` if it is a fast command; its exit code, or None to let Typer run it."""
    found = parse(args)
    if found is None:
        return None
    runner, options = found
    runner(options)
    return 0
