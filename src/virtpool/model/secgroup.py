"""Security groups: named sets of allow rules that filter the traffic of VMs' NICs.

Pure data and static rules. The semantics, like Neutron's and Incus' ACLs (README, "Security
groups"):

* A NIC of a VM in no group keeps the network's default: ingress from the same network
  allowed, every other ingress (the host, routed traffic) dropped, egress allowed.
* A NIC of a VM in one or more groups: ingress is only what an ingress rule of one of its
  groups allows. Egress stays open while none of its groups has an egress rule; once one has,
  egress is only what the egress rules allow.
* Always, whatever the rules: replies of allowed connections (conntrack), DHCP, ARP.

A rule names a protocol, optionally ports, and the other side: a CIDR, the addresses of the
NICs of another group's VMs (recomputed as members come and go), or, with neither, anywhere.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from virtpool.model.names import NAME_RULE, Name, SecGroupName
from virtpool.model.requests import FROZEN_REQUEST, REQUEST

Direction = Literal["ingress", "egress"]
Proto = Literal["tcp", "udp", "icmp"]
MAX_RULES = 100  # per group: every rule of every group a NIC is in becomes nft rules per NIC
MAX_GROUPS_PER_VM = 8


def parse_ports(text: str) -> tuple[int, int]:
    """'80' -> (80, 80), '8000-8100' -> (8000, 8100); ValueError saying what to write."""
    low, sep, high = text.partition("-")
    if not low.isdigit() or (sep and not high.isdigit()):
        raise ValueError(f"cannot read port '{text}': write P or P-Q, e.g. 22 or 8000-8100")
    first, last = int(low), int(high) if sep else int(low)
    for port in (first, last):
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range: ports are 1 to 65535")
    if first > last:
        raise ValueError(f"port range {text} runs backwards: write the lower port first")
    return first, last


def parse_cidr(text: str) -> str:
    """An IPv4 network in CIDR form ('10.0.0.0/8'; a bare address means /32)."""
    try:
        return str(ipaddress.IPv4Network(text, strict=True))
    except ValueError as err:
        raise ValueError(f"'{text}' is not an IPv4 CIDR with its host bits zero, e.g. "
                         f"10.20.0.0/24 or 192.0.2.7/32 ({err})") from None


class SecGroupSpec(BaseModel):
    """A security group to create (with no rules: its VMs' NICs take ingress from nowhere)."""

    model_config = REQUEST

    name: Name = Field(description=NAME_RULE)


class RuleSpec(BaseModel):
    """One allow rule. ``remote_cidr`` / ``remote_group``: where ingress comes from or egress
    goes to (neither: anywhere)."""

    model_config = FROZEN_REQUEST

    direction: Direction
    proto: Proto
    port_min: int | None = Field(default=None, description="first port (tcp/udp only)")
    port_max: int | None = Field(default=None, description="last port (default: port_min)")
    remote_cidr: str | None = Field(default=None, description="IPv4 CIDR of the other side")
    remote_group: SecGroupName | None = Field(default=None, description="a security group of the same "
                                     "project: the addresses of its VMs' NICs")

    @field_validator("port_min", "port_max")
    @classmethod
    def _check_port(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 65535:
            raise ValueError(f"port {value} is out of range: ports are 1 to 65535")
        return value

    @field_validator("remote_cidr")
    @classmethod
    def _check_cidr(cls, value: str | None) -> str | None:
        return None if value is None else parse_cidr(value)

    @model_validator(mode="before")
    @classmethod
    def _one_port(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("port_min") is not None and data.get("port_max") is None:
            return {**data, "port_max": data["port_min"]}  # one port: a range of one
        return data

    @model_validator(mode="after")
    def _check_shape(self) -> RuleSpec:
        if self.proto == "icmp" and (self.port_min is not None or self.port_max is not None):
            raise ValueError("icmp has no ports: leave the port out, or use tcp or udp")
        if self.port_max is not None and self.port_min is None:
            raise ValueError("port_max needs port_min")
        if self.port_min is not None and self.port_max is not None and self.port_min > self.port_max:
            raise ValueError(f"port range {self.port_min}-{self.port_max} runs backwards")
        if self.remote_cidr is not None and self.remote_group is not None:
            raise ValueError("give a CIDR or a group as the other side, not both")
        return self

    def ports(self) -> str:
        if self.port_min is None:
            return "any"
        return str(self.port_min) if self.port_min == self.port_max else f"{self.port_min}-{self.port_max}"

    def remote(self) -> str:
        if self.remote_group is not None:
            return f"group {self.remote_group}"
        return self.remote_cidr or "anywhere"


class RuleView(RuleSpec):
    id: str = Field(description="the rule's id within its group (`secgroup rule remove`)")


class SecGroupView(BaseModel):
    name: str
    project: str
    rules: list[RuleView] = Field(default_factory=list)
    vms: list[str] = Field(default_factory=list, description="the VMs in this group")


class VMSecGroups(BaseModel):
    """``vm set NAME --secgroup ...``: the whole list of the VM's groups (empty: none)."""

    model_config = REQUEST

    secgroups: list[SecGroupName] = Field(max_length=MAX_GROUPS_PER_VM)

    @field_validator("secgroups")
    @classmethod
    def _check_names(cls, value: list[str]) -> list[str]:
        return each_once(value)


def each_once(names: list[str]) -> list[str]:
    """``names``, refused when one is given twice."""
    if len(set(names)) != len(names):
        raise ValueError("a security group is named twice")
    return names


# -- what one host must have: the agent's input (data only) -----------------------------------


class HostRule(BaseModel):
    """A rule as a host applies it: the other side resolved to address prefixes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    proto: Proto
    port_min: int | None = None
    port_max: int | None = None
    remotes: tuple[str, ...] | None = Field(default=None, description="IPv4 prefixes of the "
                                            "other side; None: anywhere; empty: no one (a "
                                            "group without NICs)")


class NicFirewall(BaseModel):
    """The filter of a NIC whose VM is in security groups (the union of their rules)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ingress: tuple[HostRule, ...] = ()
    egress: tuple[HostRule, ...] = ()
    egress_restricted: bool = Field(default=False, description="some group has an egress rule: "
                                    "egress is only what those allow")
