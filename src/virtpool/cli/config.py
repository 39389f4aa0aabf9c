"""Where the CLI finds the platform: data dir, API URL and token.

Order: the environment (``VIRTPOOL_URL``, ``VIRTPOOL_TOKEN``, ``VIRTPOOL_DATA_DIR``), then the
files `virtpool up` writes in the data dir (``api.url``, ``admin.token``).
"""

from __future__ import annotations

import os
from pathlib import Path

from virtpool.model.layout import TOKEN_FILE, URL_FILE


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
