"""The naming rule of everything a user names (VMs, images, networks, groups ...)."""

from __future__ import annotations

import re

NAME_PATTERN = r"[a-z][a-z0-9-]{0,62}"
_NAME = re.compile(NAME_PATTERN)
NAME_RULE = "1-63 characters: lowercase letters, digits and '-', starting with a letter"


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))
