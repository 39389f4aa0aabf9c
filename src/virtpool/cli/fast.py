"""Commands that run without Typer, pydantic, Rich or httpx: the reads people type most, and
`vm create` (cli/create.py), whose start-up is part of every boot a user waits for.

`virtpool vm list` must answer in 0.2 s from a cold start; importing Typer alone takes about
half of that. The commands here read JSON over the SDK's standard-library transport
(sdk/transport.py) and print it with cli/output.py. The dispatcher (cli/main.py) sends a
command line here only when it is one of these commands with options this module reads (FAST
below); anything else (``--help`` included) goes
to the Typer command of the same name, which calls the same function below, so there is one
implementation of each command.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
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

    def get(self, path: str, params: dict[str, Any], *, timeout: float | None = None) -> Any:
        """The answer (``.json()``, ``.links``); a refusal raises the SDK's error for it."""
        return self.request("GET", path, params=params, timeout=timeout)

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
                headers: dict[str, str] | None = None, timeout: float | None = None) -> Any:
        """One call; a refusal raises the SDK's error for it (Unreachable: no answer came)."""
        from virtpool.sdk.errors import UntrustedServer, error_class, raise_for_problem
        from virtpool.sdk.tls import explain_refusal
        from virtpool.sdk.transport import CertificateRefused, TransportError

        params = dict(params or {})
        if self.project:
            params["project"] = self.project
        try:
            response = self._transport.request(method, path, params=params, json=json, headers=headers,
                                               timeout=self._transport.timeout if timeout is None else timeout)
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


# -- vm create (cli/create.py) --------------------------------------------------------------------


def _vm_create(o: dict[str, Any]) -> None:
    from virtpool.cli import create

    fields = create.body(o["name"], image=o.get("image", "default"), cpus=o.get("cpus", 1),
                         memory=o.get("memory", "256M"), disk=o.get("disk", "1G"), ports=o.get("ports"),
                         kernel_args=o.get("kernel_args", ""), accel=o.get("accel", "auto"),
                         start=o.get("start", False), host=o.get("host"), boot_timeout=o.get("boot_timeout"))
    create.create(fields, wait=o.get("wait", False), wait_timeout=o.get("wait_timeout", 180.0),
                  json=o.get("json", False), data_dir=o.get("data_dir"), project=o.get("project"))


# -- reading the command line --------------------------------------------------------------------

Runner = Callable[[dict[str, Any]], None]


class Spec(NamedTuple):
    """What the fast path reads of one command; anything else on its line goes to Typer."""

    flags: dict[str, str]  # option -> key (True when given)
    values: dict[str, str]  # option taking a value -> key
    run: Runner
    arguments: tuple[str, ...] = ()  # keys of the positional arguments after the verb
    kinds: dict[str, Callable[[str], Any]] | None = None  # key -> conversion (ValueError: Typer says why)
    repeated: frozenset[str] = frozenset()  # keys whose option may repeat (a list)


FAST: dict[tuple[str, str], Spec] = {
    ("vm", "list"): Spec({"--all-projects": "all_projects", "--json": "json"},
                         {"--columns": "columns", "-c": "columns"},
                         lambda o: vm_list(all_projects=o.get("all_projects", False), json=o.get("json", False),
                                           columns=o.get("columns"), data_dir=o.get("data_dir"),
                                           project=o.get("project"))),
    # What `bench/boot.py` times: `vm create NAME --start --wait` with the common shape flags.
    ("vm", "create"): Spec({"--start": "start", "--wait": "wait", "--json": "json"},
                           {"--image": "image", "--cpus": "cpus", "--memory": "memory", "--disk": "disk",
                            "--port": "ports", "--kernel-args": "kernel_args", "--accel": "accel",
                            "--host": "host", "--boot-timeout": "boot_timeout", "--wait-timeout": "wait_timeout"},
                           _vm_create, arguments=("name",),
                           kinds={"cpus": int, "boot_timeout": float, "wait_timeout": float},
                           repeated=frozenset({"ports"})),
}
GLOBAL = {"--data-dir": "data_dir", "--project": "project"}


def parse(args: list[str]) -> tuple[Runner, dict[str, Any]] | None:
    """The fast command and its options for ``args``, or None when Typer should read them."""
    words: list[str] = []
    options: dict[str, Any] = {}
    spec: Spec | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            words.append(arg)
            if len(words) == 2:
                spec = FAST.get((words[0], words[1]))
                if spec is None:
                    return None
            elif spec is not None:
                if len(words) > 2 + len(spec.arguments):
                    return None  # an argument this command does not take
                options[spec.arguments[len(words) - 3]] = arg
            i += 1
            continue
        if len(words) == 1:
            return None  # an option between noun and verb
        flags, values = (spec.flags, spec.values) if spec is not None else ({}, GLOBAL)
        name, eq, inline = arg.partition("=")
        if name in flags and not eq:
            options[flags[name]] = True
            i += 1
        elif name in values and (eq or i + 1 < len(args)):
            key, value = values[name], inline if eq else args[i + 1]
            convert = (spec.kinds or {}).get(key) if spec is not None else None
            try:
                value = convert(value) if convert is not None else value
            except ValueError:
                return None  # Typer says what it expected
            if spec is not None and key in spec.repeated:
                options.setdefault(key, []).append(value)
            else:
                options[key] = value
            i += 1 if eq else 2
        else:
            return None  # --help, or anything else: Typer answers
    if spec is None or len(words) != 2 + len(spec.arguments):
        return None
    options.setdefault("project", os.environ.get("VIRTPOOL_PROJECT") or None)
    if "data_dir" in options:
        options["data_dir"] = Path(options["data_dir"])
    return spec.run, options


def run(args: list[str]) -> int | None:
    """Run ``args`` if it is a fast command; its exit code, or None to let Typer run it."""
    found = parse(args)
    if found is None:
        return None
    runner, options = found
    runner(options)
    return 0
