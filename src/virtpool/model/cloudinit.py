"""What a VM's cloud-init (NoCloud) seed carries, and the rules its parts must follow.

Pure data and checks: the seed itself (an ISO 9660 image labelled ``cidata``) is made on the
VM's host by ``node/cloudinit.py``. Everything here is checked before anything is created, so
a bad file is a 422 that says what is wrong with it, never a guest that boots without it.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

from pydantic import BaseModel, Field, field_validator

from virtpool.model.requests import FROZEN_REQUEST

MAX_USER_DATA = 64 * 1024  # far more than any cloud-config; a seed is not a file transfer
MAX_NETWORK_CONFIG = 16 * 1024
MAX_SSH_KEYS = 32
MAX_SSH_KEY = 16 * 1024  # an RSA 16384-bit key is about 2.8 KiB; certificates are larger
SSH_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss",
})
_HOSTNAME_LABEL = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


def check_ssh_public_key(text: str) -> str:
    """One OpenSSH public key line (``TYPE BASE64 [COMMENT]``), stripped; ``ValueError``
    saying what the text is instead (a private key, a PuTTY key, garbage)."""
    line = text.strip()
    if "PRIVATE KEY" in line:
        raise ValueError("this is a private key; pass the public one (the .pub file next to it)")
    if line.startswith("---- BEGIN SSH2 PUBLIC KEY"):
        raise ValueError("this is an RFC 4716 (PuTTY) key; convert it: ssh-keygen -i -f FILE")
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise ValueError("not an OpenSSH public key (expected 'ssh-ed25519 AAAA... comment')")
    if "\n" in line:
        raise ValueError("an SSH public key is one line; pass one key per --ssh-key")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key's base64 part is damaged") from None
    # The blob starts with its own type as an SSH string; a key pasted with a wrong type or
    # cut short fails here rather than in the guest's sshd.
    if len(blob) < 4:
        raise ValueError("the key's base64 part is too short")
    (length,) = struct.unpack_from(">I", blob)
    if blob[4:4 + length].decode(errors="replace") != parts[0]:
        raise ValueError(f"the key's data is not a {parts[0]} key")
    return line


def check_hostname(value: str) -> str:
    """A hostname (RFC 1123: dot-separated labels of letters, digits and '-')."""
    if len(value) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in value.split(".")):
        raise ValueError(f"'{value}' is not a hostname: labels of 1-63 letters, digits and '-' "
                         "(not at either end), joined by '.'")
    return value


def check_user_data(text: str) -> str:
    """cloud-config YAML (first line ``#cloud-config``) or a script (``#!``)."""
    if text.startswith("#!"):
        return text
    first = text.split("\n", 1)[0].strip()
    if first != "#cloud-config":
        raise ValueError("cloud-init ignores user-data that does not start with the line "
                         "'#cloud-config' (or '#!' for a script); add that line")
    document = _yaml(text, "user-data")
    if document is not None and not isinstance(document, dict):
        raise ValueError("the cloud-config must be a YAML mapping (keys such as runcmd:, "
                         "write_files:)")
    return text


def check_network_config(text: str) -> str:
    """Network config version 1 or 2, with or without a top-level ``network:`` key."""
    document = _yaml(text, "network-config")
    if isinstance(document, dict) and isinstance(document.get("network"), dict):
        document = document["network"]
    if not isinstance(document, dict) or document.get("version") not in (1, 2):
        raise ValueError("the network config must be a YAML mapping with 'version: 1' or "
                         "'version: 2' (see cloud-init's network config docs)")
    return text


def _yaml(text: str, what: str) -> object:
    import yaml  # here: the model is imported by every CLI command, YAML only by a create

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"the {what} is not valid YAML{where}: {problem}") from None


class CloudInit(BaseModel):
    """The parts of a VM's NoCloud seed that its user gives. The seed's meta-data adds the
    VM's own instance-id (its id, so that only a clone is a new instance)."""

    model_config = FROZEN_REQUEST

    user_data: str | None = Field(default=None, max_length=MAX_USER_DATA,
                                  description="cloud-config ('#cloud-config' first) or a script")
    network_config: str | None = Field(default=None, max_length=MAX_NETWORK_CONFIG,
                                       description="network config v1 or v2 (default: DHCP)")
    ssh_keys: list[str] = Field(default_factory=list, max_length=MAX_SSH_KEYS,
                                description="OpenSSH public keys for the image's default user")
    hostname: str | None = Field(default=None, description="the guest's hostname "
                                 "(default: the VM's name)")

    @field_validator("user_data")
    @classmethod
    def _user_data(cls, value: str | None) -> str | None:
        return None if value is None else check_user_data(value)

    @field_validator("network_config")
    @classmethod
    def _network_config(cls, value: str | None) -> str | None:
        return None if value is None else check_network_config(value)

    @field_validator("ssh_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        checked = []
        for index, key in enumerate(value):
            if len(key) > MAX_SSH_KEY:
                raise ValueError(f"SSH key {index + 1} is over {MAX_SSH_KEY} bytes: not a public key")
            try:
                checked.append(check_ssh_public_key(key))
            except ValueError as err:
                raise ValueError(f"SSH key {index + 1}: {err}") from None
        return checked

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        return None if value is None else check_hostname(value)

    def for_clone(self) -> CloudInit:
        """What a clone's seed carries: the same configuration, but its own hostname (the
        clone's name) rather than the source's."""
        return self.model_copy(update={"hostname": None})
