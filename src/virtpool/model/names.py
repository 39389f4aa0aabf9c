"""The naming rule of everything a user names (VMs, images, networks, groups ...)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

NAME_PATTERN = r"[a-z][a-z0-9-]{0,62}"
_NAME = re.compile(NAME_PATTERN)
NAME_RULE = "1-63 characters: lowercase letters, digits and '-', starting with a letter"


def valid_name(name: str) -> bool:
    """Whether ``name`` follows :data:`NAME_RULE`."""
    return bool(_NAME.fullmatch(name))


def _checked(what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not valid_name(value):
            raise ValueError(f"'{value}' is not a valid {what}: {NAME_RULE}")
        return value
    return AfterValidator(check)


Name = Annotated[str, _checked("name")]
"""A model field holding a user-chosen name; a bad one fails validation with the rule."""

NetworkName = Annotated[str, _checked("network name")]
"""The name of a network, as a reference from another resource."""
