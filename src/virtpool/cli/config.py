"""Where the CLI finds the platform: data dir, API URL, token, and how to trust its certificate.

Order: the environment (``VIRTPOOL_URL``, ``VIRTPOOL_TOKEN``, ``VIRTPOOL_DATA_DIR``), then a
remote (``VIRTPOOL_REMOTE``, or the default one `virtpool remote switch` chose; not when a data
dir is given by ``--data-dir`` or ``VIRTPOOL_DATA_DIR``), then the files `virtpool up` writes in the data dir (``api.url``,
``admin.token``). Over HTTPS the server is checked against ``VIRTPOOL_CA`` when set, else the
remote's pinned certificate, else the pool CA its data dir holds (``api-ca.crt``), else the
system's CAs (see sdk/tls.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from virtpool.cli import remotes
from virtpool.model.layout import API_CA_FILE, TOKEN_FILE, URL_FILE
from virtpool.sdk.tls import CA_ENV, Trust


class ConfigError(Exception):
    """The CLI cannot tell where the platform is or how to log in."""


def default_data_dir() -> Path:
    env = os.environ.get("VIRTPOOL_DATA_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/virtpool")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "virtpool"


def api_url(data_dir: Path) -> str:
    env = os.environ.get("VIRTPOOL_URL")
    if env:
        # `virtpool up` prints the API's URL (…/api/v1) next to the server's: either will do.
        return env.rstrip("/").removesuffix("/api/v1")
    try:
        return (data_dir / URL_FILE).read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"virtpool does not seem to be running: no {data_dir / URL_FILE}. "
            "Start it with `virtpool up`, or set VIRTPOOL_URL."
        ) from None


def api_token(data_dir: Path) -> str:
    env = os.environ.get("VIRTPOOL_TOKEN")
    if env:
        return env
    path = data_dir / TOKEN_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"no API token: set VIRTPOOL_TOKEN, or run `virtpool up` once to create {path}") from None
    except PermissionError:
        raise ConfigError(f"cannot read {path}: it is private to its owner; set VIRTPOOL_TOKEN") from None


class Target(NamedTuple):
    """The server a command talks to: its URL, the token to show it, what to trust."""

    url: str
    token: str
    trust: Trust


def _pinned(remote: remotes.Remote) -> Trust:
    return Trust(pinned_cert=remotes.cert_file(remote.name), remote=remote.name)


def target(data_dir: Path | None = None) -> Target:
    """Where commands go (see the module's docstring); ``data_dir`` when one was given on the
    command line, which (as VIRTPOOL_DATA_DIR) means this machine's server."""
    directory = data_dir or default_data_dir()
    local = data_dir is not None or bool(os.environ.get("VIRTPOOL_DATA_DIR"))
    try:
        ca_env = os.environ.get(CA_ENV)
        named = os.environ.get("VIRTPOOL_REMOTE") or (None if local else remotes.default())
        if not os.environ.get("VIRTPOOL_URL") and named and named != remotes.LOCAL:
            remote = remotes.get(named)
            token = os.environ.get("VIRTPOOL_TOKEN") or remote.token
            if not token:
                raise ConfigError(f"no API token for remote '{remote.name}': set VIRTPOOL_TOKEN, or add the "
                                  "remote again with --token")
            trust = Trust(ca_file=Path(ca_env)) if ca_env else _pinned(remote)
            return Target(remote.url, token, trust)
        url = api_url(directory)
        if ca_env:
            trust = Trust(ca_file=Path(ca_env))
        elif (remote := remotes.for_url(url)) is not None:
            trust = _pinned(remote)
        elif os.access(directory / API_CA_FILE, os.R_OK):
            trust = Trust(ca_file=directory / API_CA_FILE)
        else:
            trust = Trust()
    except remotes.RemoteError as err:
        raise ConfigError(str(err)) from err
    return Target(url, api_token(directory), trust)
