"""The user's remotes: virtpool servers reached over HTTPS, each with its pinned certificate.

``virtpool remote add NAME URL`` reads the certificate the server presents, shows its SHA-256
and, once the user accepts it, stores it (as `incus remote add` does). Later commands accept
that certificate and no other. Kept in ``$XDG_CONFIG_HOME/virtpool/`` (default ``~/.config``):
``remotes.json`` (URLs, fingerprints, tokens, the default) and ``servercerts/NAME.crt``, the
directory 0700 and every file 0600, because a remote's token is a secret.

Standard library only: the CLI's fast path reads this file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import NamedTuple

LOCAL = "local"  # the server whose data dir is on this machine (`virtpool up`)
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class RemoteError(Exception):
    """A remote that is not there, or a config that cannot be read."""


class Remote(NamedTuple):
    name: str
    url: str
    fingerprint: str
    token: str | None = None


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "virtpool"


def cert_file(name: str) -> Path:
    return config_dir() / "servercerts" / f"{name}.crt"


def _file() -> Path:
    return config_dir() / "remotes.json"


def _load() -> dict[str, object]:
    try:
        data = json.loads(_file().read_text())
    except FileNotFoundError:
        return {"default": LOCAL, "remotes": {}}
    except (OSError, ValueError) as err:
        raise RemoteError(f"cannot read {_file()}: {err}") from err
    return data if isinstance(data, dict) else {"default": LOCAL, "remotes": {}}


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    staging = path.with_name(f".{path.name}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(staging, path)


def _save(data: dict[str, object]) -> None:
    config_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(config_dir(), 0o700)
    _write_private(_file(), json.dumps(data, indent=2) + "\n")


def _remotes(data: dict[str, object]) -> dict[str, dict[str, object]]:
    found = data.get("remotes")
    return found if isinstance(found, dict) else {}


def all_remotes() -> list[Remote]:
    return [Remote(name=n, url=str(r["url"]), fingerprint=str(r["fingerprint"]),
                   token=r.get("token"))  # type: ignore[arg-type]
            for n, r in sorted(_remotes(_load()).items())]


def get(name: str) -> Remote:
    found = next((r for r in all_remotes() if r.name == name), None)
    if found is None:
        raise RemoteError(f"no remote named '{name}'; see `virtpool remote list`, or add it with "
                          f"`virtpool remote add {name} URL`")
    return found


def default() -> str:
    return str(_load().get("default") or LOCAL)


def add(remote: Remote, cert_pem: str) -> None:
    if not NAME.fullmatch(remote.name) or remote.name == LOCAL:
        raise RemoteError(f"'{remote.name}' cannot name a remote: use lowercase letters, digits "
                          f"and dashes (and not '{LOCAL}')")
    data = _load()
    if remote.name in _remotes(data):
        raise RemoteError(f"a remote named '{remote.name}' exists; remove it first "
                          f"(`virtpool remote remove {remote.name}`)")
    _write_private(cert_file(remote.name), cert_pem)
    entry = {k: v for k, v in remote._asdict().items() if k != "name" and v is not None}
    data["remotes"] = {**_remotes(data), remote.name: entry}
    _save(data)


def remove(name: str) -> None:
    get(name)
    data = _load()
    data["remotes"] = {n: r for n, r in _remotes(data).items() if n != name}
    if data.get("default") == name:
        data["default"] = LOCAL
    _save(data)
    cert_file(name).unlink(missing_ok=True)


def switch(name: str) -> None:
    if name != LOCAL:
        get(name)
    data = _load()
    data["default"] = name
    _save(data)


def for_url(url: str) -> Remote | None:
    """The remote added for ``url``, if any (a VIRTPOOL_URL may name one)."""
    wanted = url.rstrip("/").removesuffix("/api/v1")
    return next((r for r in all_remotes() if r.url == wanted), None)
