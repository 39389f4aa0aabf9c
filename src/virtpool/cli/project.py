"""`virtpool project …`: projects (tenants) and their quotas."""

from __future__ import annotations

from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.common import JsonFlag, ProjectName, client
from virtpool.model.errors import VirtpoolError
from virtpool.model.project import ProjectInfo
from virtpool.model.units import format_mib, parse_size_mib

app = typer.Typer(help="Projects (tenants) and their quotas.", no_args_is_help=True)
quota_app = typer.Typer(help="A project's quotas.", no_args_is_help=True)
app.add_typer(quota_app, name="quota")

UNLIMITED = "unlimited"
Count = Annotated[str | None, typer.Option(help="a number, or 'unlimited'")]
Size = Annotated[str | None, typer.Option(help="a size such as 64G, or 'unlimited'")]


def parse_limit(text: str, *, size: bool, what: str) -> int | None:
    """'unlimited' → None; a count, or a size in MiB."""
    if text.lower() in (UNLIMITED, "none"):
        return None
    if size:
        return parse_size_mib(text, what=what)
    if not text.isdigit():
        output.fail(f"cannot read {what} '{text}'", hint="write a whole number or 'unlimited'")
    return int(text)


def quota_changes(cpus: str | None, memory: str | None, disk: str | None, vms: str | None) -> dict[str, int | None]:
    asked = {"cpus": (cpus, False), "memory_mib": (memory, True), "disk_mib": (disk, True), "vms": (vms, False)}
    try:
        return {key: parse_limit(text, size=size, what=key.removesuffix("_mib"))
                for key, (text, size) in asked.items() if text is not None}
    except VirtpoolError as err:
        output.fail(err.message, hint=err.hint)


def _usage(used: int, limit: int | None, size: bool) -> str:
    shown = format_mib if size else str
    return f"{shown(used)} of {shown(limit) if limit is not None else UNLIMITED}"


def _rows(project: ProjectInfo) -> list[tuple[str, str]]:
    q, u = project.quota, project.usage
    return [("vms", _usage(u.vms, q.vms, False)), ("cpus", _usage(u.cpus, q.cpus, False)),
            ("memory", _usage(u.memory_mib, q.memory_mib, True)), ("disk", _usage(u.disk_mib, q.disk_mib, True))]


def _show(project: ProjectInfo) -> None:
    output.fields([("project", project.name), *_rows(project),
                   ("created", f"{project.created_at:%Y-%m-%d %H:%M:%S}")])


@app.command("list")
def list_(json: JsonFlag = False) -> None:
    """Projects with their usage next to their quotas.

    Examples:

        virtpool project list

        virtpool project list --json
    """
    with output.errors():
        projects = client().projects()
    if json:
        return output.emit_json(projects)
    output.table(["NAME", "VMS", "CPUS", "MEMORY", "DISK"],
                 [(p.name, *(value for _, value in _rows(p))) for p in projects])


@app.command("show")
def show(name: ProjectName, json: JsonFlag = False) -> None:
    """One project: usage next to quota.

    Examples:

        virtpool project show team-a
    """
    with output.errors():
        project = client().project_info(name)
    if json:
        return output.emit_json(project)
    _show(project)


@app.command("create")
def create(name: str, cpus: Count = None, memory: Size = None, disk: Size = None, vms: Count = None,
           json: JsonFlag = False) -> None:
    """Create a project, optionally with quotas (pool admins).

    Examples:

        virtpool project create team-a

        virtpool project create team-a --cpus 16 --memory 32G --disk 200G --vms 20
    """
    quota = quota_changes(cpus, memory, disk, vms)
    with output.errors():
        project = client().create_project(name, **quota)
    if json:
        return output.emit_json(project)
    output.print_line(f"project '{project.name}' created")
    _show(project)


@app.command("delete")
def delete(name: ProjectName, json: JsonFlag = False) -> None:
    """Delete an empty project and its tokens (refused while it has VMs).

    Examples:

        virtpool project delete team-a
    """
    with output.errors():
        client().delete_project(name)
    if json:
        return output.emit_json({"deleted": name})
    output.print_line(f"project '{name}' deleted")


@quota_app.command("set")
def quota_set(name: ProjectName, cpus: Count = None, memory: Size = None, disk: Size = None, vms: Count = None,
              json: JsonFlag = False) -> None:
    """Change quotas; the others stay. Below current usage is allowed: it blocks new growth only.

    Examples:

        virtpool project quota set team-a --cpus 32 --vms 40
    """
    changes = quota_changes(cpus, memory, disk, vms)
    if not changes:
        output.fail("no quota given", hint="give at least one of --cpus, --memory, --disk, --vms")
    with output.errors():
        result = client().set_quota(name, **changes)
    if json:
        return output.emit_json(result)
    _show(result.project)
    for note in result.notes:
        output.note(f"[yellow]note:[/] {note}")
