"""`virtpool remote …`: virtpool servers on other machines, trusted by a pinned certificate."""

from __future__ import annotations

import ssl
import sys
from typing import Annotated
from urllib.parse import urlsplit

import typer

from virtpool.cli import output, remotes
from virtpool.cli.common import JsonFlag

app = typer.Typer(help="Servers on other machines, each trusted by the certificate pinned when "
                       "it was added.", no_args_is_help=True)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="a name for the server (lowercase, digits, dashes)")],
    url: Annotated[str, typer.Argument(help="its URL, https://HOST:PORT")],
    token: Annotated[str | None, typer.Option(help="the API token to use with it (stored 0600; "
                                                   "else VIRTPOOL_TOKEN is used)")] = None,
    accept_certificate: Annotated[bool, typer.Option(
        "--accept-certificate", help="pin the certificate the server shows without asking")] = False,
    json: JsonFlag = False,
) -> None:
    """Add a server: show the SHA-256 of the certificate it presents, and pin it once accepted
    (compare it with what the server printed at start). Later commands trust that certificate
    only.

    Examples:

        virtpool remote add prod https://pool.example.com:8470

        virtpool remote add lab https://10.0.0.5:8470 --accept-certificate
    """
    from virtpool.sdk import tls

    parts = urlsplit(url.rstrip("/").removesuffix("/api/v1"))
    if parts.scheme != "https" or not parts.hostname:
        output.fail(f"'{url}' is not an https:// URL",
                    hint="beyond loopback virtpool serves HTTPS only: write https://HOST:PORT")
    base = f"https://{parts.netloc}"
    try:
        der = tls.presented_certificate(parts.hostname, parts.port or 443)
    except (OSError, ssl.SSLError) as err:
        output.fail(f"cannot read the certificate of {base}: {err}", output.EXIT_UNREACHABLE,
                    hint="is the server running, and is this its address?")
    fingerprint = tls.fingerprint(der)
    if not json:
        output.print_line(f"certificate of {base}: SHA-256 {fingerprint}", stderr=True, wrapped=False)
    if not accept_certificate:
        if not sys.stdin.isatty():
            output.fail("not pinned: the certificate was not accepted",
                        hint="compare the fingerprint with the one the server printed at start, "
                             "then add again with --accept-certificate")
        if not typer.confirm("Is this the server's certificate (compare with what it printed at start)?"):
            output.fail("not pinned: the certificate was not accepted")
    try:
        remotes.add(remotes.Remote(name=name, url=base, fingerprint=fingerprint, token=token), tls.pem(der))
    except remotes.RemoteError as err:
        output.fail(str(err))
    if json:
        return output.emit_json({"name": name, "url": base, "fingerprint": fingerprint})
    output.print_line(f"remote '{name}' added; use it with `virtpool remote switch {name}` or "
                      f"VIRTPOOL_REMOTE={name}", stderr=True)


@app.command("list")
def list_(json: JsonFlag = False) -> None:
    """The remotes, the default marked (never their tokens).

    Examples:

        virtpool remote list

        virtpool remote list --json
    """
    try:
        found, chosen = remotes.all_remotes(), remotes.default()
    except remotes.RemoteError as err:
        output.fail(str(err))
    rows = [{"name": r.name, "url": r.url, "fingerprint": r.fingerprint, "default": r.name == chosen,
             "token": r.token is not None} for r in found]
    if json:
        return output.emit_json([{"name": remotes.LOCAL, "url": None, "fingerprint": None,
                                  "default": chosen == remotes.LOCAL, "token": None}, *rows])
    output.table(["NAME", "URL", "FINGERPRINT", "DEFAULT", "TOKEN"],
                 [[remotes.LOCAL, "this machine's data dir", "-", "*" if chosen == remotes.LOCAL else "", "-"]]
                 + [[r["name"], r["url"], r["fingerprint"], "*" if r["default"] else "",
                     "stored" if r["token"] else "-"] for r in rows])


@app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="the remote's name")]) -> None:
    """Forget a remote: its URL, pinned certificate and token.

    Examples:

        virtpool remote remove lab
    """
    try:
        remotes.remove(name)
    except remotes.RemoteError as err:
        output.fail(str(err))
    output.print_line(f"remote '{name}' removed", stderr=True)


@app.command("switch")
def switch(name: Annotated[str, typer.Argument(help=f"a remote's name, or '{remotes.LOCAL}'")]) -> None:
    """Make a remote the one commands talk to ('local': the server of this machine's data dir).

    Examples:

        virtpool remote switch prod
    """
    try:
        remotes.switch(name)
    except remotes.RemoteError as err:
        output.fail(str(err))
    output.print_line(f"commands now talk to '{name}'", stderr=True)
