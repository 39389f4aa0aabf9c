"""`virtpool secgroup …`: security groups of a project and their allow rules."""

from __future__ import annotations

from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.common import JsonFlag
from virtpool.cli.network import ProjectOption, _client
from virtpool.model.secgroup import RuleView, parse_ports

app = typer.Typer(help="Security groups: which traffic reaches (and leaves) the NICs of VMs.",
                  no_args_is_help=True)
rule_app = typer.Typer(help="Allow rules of a security group.", no_args_is_help=True)
app.add_typer(rule_app, name="rule")

# API fields -> the flags of `secgroup rule add`, so that a refusal names what was typed.
RULE_FLAGS = {"port_min": "--port", "port_max": "--port", "remote_cidr": "--from",
              "remote_group": "--from-group", "proto": "--proto"}

Ingress = Annotated[bool, typer.Option("--ingress", help="traffic to the VMs")]
Egress = Annotated[bool, typer.Option("--egress", help="traffic from the VMs")]
Proto = Annotated[str | None, typer.Option(help="tcp, udp or icmp")]
Port = Annotated[str | None, typer.Option(help="P or P-Q (tcp and udp only; default: every port)")]
FromCidr = Annotated[str | None, typer.Option(
    "--from", "--to", help="the other side: an IPv4 CIDR (default: anywhere)")]
FromGroup = Annotated[str | None, typer.Option(
    "--from-group", "--to-group", help="the other side: the NICs of this group's VMs")]


@app.command("create")
def create(name: str, project: ProjectOption = None, json: JsonFlag = False) -> None:
    """Create a group; add rules with `secgroup rule add`, VMs with `vm create/set --secgroup`.

    Examples:

        virtpool secgroup create web

        virtpool secgroup create db --project team-a
    """
    with output.errors():
        group = _client(project).create_secgroup(name)
    if json:
        return output.emit_json(group)
    output.out.print(f"security group '{group.name}' created (no rules: its VMs take ingress "
                     "from nowhere until you add some)")


@app.command("list")
def list_(project: ProjectOption = None, json: JsonFlag = False) -> None:
    """Every security group of the project.

    Examples:

        virtpool secgroup list

        virtpool secgroup list --json
    """
    with output.errors():
        groups = _client(project).secgroups()
    if json:
        return output.emit_json(groups)
    output.table(["NAME", "RULES", "VMS"],
                 [(g.name, len(g.rules), ", ".join(g.vms) or "-") for g in groups])


@app.command("show")
def show(name: str, project: ProjectOption = None, json: JsonFlag = False) -> None:
    """One group: its rules and its VMs.

    Examples:

        virtpool secgroup show web

        virtpool secgroup show web --json
    """
    with output.errors():
        group = _client(project).secgroup(name)
    if json:
        return output.emit_json(group)
    output.fields([("name", group.name), ("project", group.project),
                   ("vms", ", ".join(group.vms) or "-")])
    output.table(["RULE", "DIRECTION", "PROTO", "PORTS", "OTHER SIDE"],
                 [(r.id, r.direction, r.proto, r.ports(), r.remote()) for r in group.rules])


@app.command("delete")
def delete(name: str, project: ProjectOption = None, json: JsonFlag = False) -> None:
    """Delete a group. Refused while VMs are in it or other groups' rules name it.

    Examples:

        virtpool secgroup delete web

        virtpool secgroup delete db --project team-a
    """
    with output.errors():
        _client(project).delete_secgroup(name)
    if json:
        return output.emit_json({"deleted": name})
    output.out.print(f"security group '{name}' deleted")


def _direction(ingress: bool, egress: bool) -> str:
    if ingress == egress:
        output.fail("say which traffic the rule is for: --ingress or --egress (one of them)",
                    code=output.EXIT_USAGE,
                    hint="e.g. virtpool secgroup rule add web --ingress --proto tcp --port 80")
    return "ingress" if ingress else "egress"


@rule_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="the security group")],
    ingress: Ingress = False, egress: Egress = False, proto: Proto = None, port: Port = None,
    from_: FromCidr = None, from_group: FromGroup = None,
    project: ProjectOption = None, json: JsonFlag = False,
) -> None:
    """Allow traffic; running VMs in the group get the rule at once.

    Examples:

        virtpool secgroup rule add web --ingress --proto tcp --port 80

        virtpool secgroup rule add db --ingress --proto tcp --port 5432 --from-group web
    """
    direction = _direction(ingress, egress)
    if proto is None:
        output.fail("say the protocol: --proto tcp, udp or icmp", code=output.EXIT_USAGE)
    with output.errors(RULE_FLAGS):
        rule = _client(project).add_secgroup_rule(name, direction, proto, ports=port,
                                                  remote_cidr=from_, remote_group=from_group)
    if json:
        return output.emit_json(rule)
    output.out.print(f"rule {rule.id} added to '{name}': {_describe(rule)}")


@rule_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="the security group")],
    rule_id: Annotated[str | None, typer.Argument(help="the rule's id (`secgroup show`); or "
                                                  "give the rule as for `rule add`")] = None,
    ingress: Ingress = False, egress: Egress = False, proto: Proto = None, port: Port = None,
    from_: FromCidr = None, from_group: FromGroup = None,
    project: ProjectOption = None, json: JsonFlag = False,
) -> None:
    """Remove a rule, by its id or as it was added; running VMs lose it at once.

    Examples:

        virtpool secgroup rule remove web 1a2b3c4d

        virtpool secgroup rule remove web --ingress --proto tcp --port 80
    """
    api = _client(project)
    with output.errors(RULE_FLAGS):
        if rule_id is None:
            rule_id = _find_rule(api.secgroup(name).rules, _direction(ingress, egress), proto,
                                 port, from_, from_group)
        api.remove_secgroup_rule(name, rule_id)
    if json:
        return output.emit_json({"removed": rule_id, "secgroup": name})
    output.out.print(f"rule {rule_id} removed from '{name}'")


def _find_rule(rules: list[RuleView], direction: str, proto: str | None, port: str | None,
               cidr: str | None, group: str | None) -> str:
    ports: tuple[int | None, int | None] = (None, None)
    if port is not None:
        try:
            ports = parse_ports(port)
        except ValueError as err:
            output.fail(str(err))
    for rule in rules:
        if (rule.direction, rule.proto, rule.port_min, rule.port_max, rule.remote_cidr,
                rule.remote_group) == (direction, proto, *ports, cidr, group):
            return rule.id
    output.fail("the group has no such rule", hint="see its rules with `virtpool secgroup show`")


def _describe(rule: RuleView) -> str:
    side = "from" if rule.direction == "ingress" else "to"
    return f"{rule.direction} {rule.proto} port {rule.ports()} {side} {rule.remote()}"
