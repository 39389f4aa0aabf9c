"""`virtpool group …`: placement groups (VMs kept apart or together)."""

from __future__ import annotations

from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.common import JsonFlag, client
from virtpool.model.inventory import GroupView
from virtpool.model.resources import GROUP_POLICIES

app = typer.Typer(help="Placement groups: VMs that run apart (anti-affinity) or together.",
                  no_args_is_help=True)


def _rule(g: GroupView) -> str:
    return f"{g.policy} ({'hard' if g.hard else 'soft'})"


@app.command("create")
def create(
    name: str,
    policy: Annotated[str, typer.Option(help=" | ".join(GROUP_POLICIES))],
    soft: Annotated[bool, typer.Option("--soft", help="a preference the scheduler may break "
                                                      "when it must, not a rule")] = False,
    json: JsonFlag = False,
) -> None:
    """Create a group; put VMs in it with `virtpool vm create NAME --group GROUP`.

    Examples:

        virtpool group create web-spread --policy anti-affinity

        virtpool group create cache-near --policy affinity --soft
    """
    if policy not in GROUP_POLICIES:
        output.fail(f"unknown policy '{policy}'", hint=f"one of: {', '.join(GROUP_POLICIES)}")
    with output.errors():
        group = client().create_group(name, policy, hard=not soft)
    if json:
        return output.emit_json(group)
    output.print_line(f"group '{group.name}' created: {_rule(group)}")


@app.command("list")
def list_(json: JsonFlag = False) -> None:
    """Every group of the project, with its rule and how many VMs it has.

    Examples:

        virtpool group list

        virtpool group list --json
    """
    with output.errors():
        groups = client().groups()
    if json:
        return output.emit_json(groups)
    output.table(["NAME", "POLICY", "VMS"], [(g.name, _rule(g), len(g.members)) for g in groups])


@app.command("show")
def show(name: str, json: JsonFlag = False) -> None:
    """One group and where its VMs run.

    Examples:

        virtpool group show web-spread
    """
    with output.errors():
        group = client().group(name)
    if json:
        return output.emit_json(group)
    output.fields([("name", group.name), ("policy", _rule(group)), ("project", group.project)])
    output.table(["VM", "HOST"], sorted(group.members.items()))


@app.command("delete")
def delete(name: str, json: JsonFlag = False) -> None:
    """Delete a group. Refused while it has VMs: delete them first.

    Examples:

        virtpool group delete web-spread
    """
    with output.errors():
        client().delete_group(name)
    if json:
        return output.emit_json({"deleted": name})
    output.print_line(f"group '{name}' deleted")
