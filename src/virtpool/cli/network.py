"""`virtpool network …`: virtual networks of a project (a bridge per host, VXLAN between hosts)."""

from __future__ import annotations

from typing import Annotated

import typer

from virtpool.cli import common, output
from virtpool.cli.common import JsonFlag, client
from virtpool.sdk import Client

app = typer.Typer(help="Virtual networks: VMs of a project reach each other on them.",
                  no_args_is_help=True)

ProjectOption = Annotated[str | None, typer.Option("--project", help="act in this project "
                                                   "(same as `virtpool --project P`)")]


def _client(project: str | None) -> Client:
    if project is not None:
        common.set_project(project)
    return client()


@app.command("create")
def create(
    name: str,
    subnet: Annotated[str | None, typer.Option(help="IPv4 CIDR, e.g. 10.20.0.0/24 "
                                               "(default: a free /24 of 10.20.0.0/16)")] = None,
    nat: Annotated[bool, typer.Option("--nat/--no-nat", help="masquerade egress through the host")] = False,
    project: ProjectOption = None,
    json: JsonFlag = False,
) -> None:
    """Create a network; put VMs on it with `virtpool vm create NAME --network NETWORK`.

    Examples:

        virtpool network create lan --subnet 10.20.0.0/24

        virtpool network create edge --subnet 10.30.0.0/24 --nat
    """
    with output.errors():
        network = _client(project).create_network(name, subnet=subnet, nat=nat)
    if json:
        return output.emit_json(network)
    output.out.print(f"network '{network.name}' created: {network.subnet}, gateway "
                     f"{network.gateway}, {'NAT' if network.nat else 'no NAT'}, VNI {network.vni}")


@app.command("list")
def list_(project: ProjectOption = None, json: JsonFlag = False) -> None:
    """Every network of the project.

    Examples:

        virtpool network list

        virtpool network list --project team-a --json
    """
    with output.errors():
        networks = _client(project).networks()
    if json:
        return output.emit_json(networks)
    output.table(["NAME", "SUBNET", "NAT", "VNI", "NICS"],
                 [(n.name, n.subnet, "yes" if n.nat else "no", n.vni, len(n.nics)) for n in networks])


@app.command("show")
def show(name: str, project: ProjectOption = None, json: JsonFlag = False) -> None:
    """One network and the NICs on it.

    Examples:

        virtpool network show lan
    """
    with output.errors():
        network = _client(project).network(name)
    if json:
        return output.emit_json(network)
    output.fields([("name", network.name), ("project", network.project),
                   ("subnet", network.subnet), ("gateway", network.gateway),
                   ("nat", "yes" if network.nat else "no"), ("vni", network.vni),
                   ("mtu", network.mtu)])
    output.table(["VM", "MAC", "ADDRESS"], [(n.vm, n.mac, n.address) for n in network.nics])


@app.command("delete")
def delete(name: str, project: ProjectOption = None, json: JsonFlag = False) -> None:
    """Delete a network. Refused while VMs are on it: delete them first.

    Examples:

        virtpool network delete lan
    """
    with output.errors():
        _client(project).delete_network(name)
    if json:
        return output.emit_json({"deleted": name})
    output.out.print(f"network '{name}' deleted")
