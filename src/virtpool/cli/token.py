"""`virtpool token …`: API tokens and their roles."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.audit import UNITS
from virtpool.cli.common import JsonFlag, client
from virtpool.model.roles import Role

app = typer.Typer(help="API tokens: who may do what in which project.", no_args_is_help=True)


def parse_duration_s(text: str) -> int:
    """'30d', '12h', '90m', '45s' → seconds."""
    if text and text[-1] in UNITS and text[:-1].isdigit() and int(text[:-1]) > 0:
        return int(text[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]
    output.fail(f"cannot read duration '{text}'", hint="write e.g. 30d, 12h or 90m")


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else "-"


@app.command("create")
def create(
    role: Annotated[Role, typer.Option(help="admin, member, viewer, or metrics (reads /metrics only)")],
    name: Annotated[str | None, typer.Option(help="a name to know it by (default: ROLE-<random>)")] = None,
    project: Annotated[str | None, typer.Option(help="the project it acts in (default: your token's; 'default' for a pool admin)")] = None,
    pool_wide: Annotated[bool, typer.Option("--pool-wide", help="a pool-wide admin (or metrics) token")] = False,
    expires: Annotated[str | None, typer.Option(help="lifetime, e.g. 30d or 12h (default: none)")] = None,
    json: JsonFlag = False,
) -> None:
    """Create a token. Its secret is printed once (with --json, in the field `token`).

    Examples:

        virtpool token create --role member --name ci --project team-a --expires 30d

        virtpool token create --role metrics --pool-wide --name prometheus --json
    """
    expires_in_s = parse_duration_s(expires) if expires else None
    name = name or f"{role.value}-{secrets.token_hex(3)}"
    with output.errors():
        created = client().create_token(name, role.value, project=project, pool_wide=pool_wide,
                                   expires_in_s=expires_in_s)
    if json:
        return output.emit_json(created)
    output.err.print(f"token '{created.name}' ({created.role} in {created.project or 'every project'}); "
                     "keep it safe, it is not shown again:", highlight=False)
    output.out.print(created.token, highlight=False, soft_wrap=True)


@app.command("list")
def list_(project: Annotated[str | None, typer.Option(help="only this project's tokens")] = None,
          json: JsonFlag = False) -> None:
    """Tokens with their roles and lifetimes (never their secrets).

    Examples:

        virtpool token list

        virtpool token list --project team-a --json
    """
    with output.errors():
        tokens = client().tokens(project=project)
    if json:
        return output.emit_json(tokens)
    output.table(["NAME", "ID", "PROJECT", "ROLE", "CREATED", "EXPIRES", "REVOKED"],
                 [(t.name, t.id, t.project or "(pool-wide)", t.role, _when(t.created_at), _when(t.expires_at),
                   _when(t.revoked_at)) for t in tokens])


@app.command("revoke")
def revoke(token: Annotated[str, typer.Argument(help="the token's name or id")], json: JsonFlag = False) -> None:
    """Revoke a token: every request with it is refused from now on.

    Examples:

        virtpool token revoke ci
    """
    with output.errors():
        revoked = client().revoke_token(token)
    if json:
        return output.emit_json(revoked)
    output.print_line(f"token '{revoked.name}' is revoked")
