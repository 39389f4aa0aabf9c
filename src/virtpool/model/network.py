"""Virtual networks of a project, the NICs of VMs on them, and what a host must have for them.

Pure data and static rules (pydantic, ``ipaddress``): the control plane checks overlaps and
hands out addresses, the agent turns ``HostNetworkInput`` into devices and rules.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from virtpool.model.names import NAME_RULE, Name, NetworkName
from virtpool.model.requests import REQUEST
from virtpool.model.secgroup import NicFirewall

DEFAULT_SUBNET_POOL = ipaddress.IPv4Network("10.20.0.0/16")  # /24s handed out when none is given
MIN_PREFIX, MAX_PREFIX = 16, 29  # a gateway, a DHCP range and room for VMs; no bigger than /16
# What a guest sends through VXLAN on a 1500-byte underlay: 50 bytes go to the outer IPv4, UDP
# and VXLAN headers and the inner Ethernet header.
DEFAULT_MTU = 1450
VNI_FIRST = 4096  # VNIs below are left to the operator's own VXLANs
# The default network's range inside guests (node/net/passt.py): a virtpool network there would
# make a VM with both unable to tell them apart.
RESERVED = (ipaddress.IPv4Network("10.0.2.0/24"),)
_MAC = re.compile(r"52:54:00(:[0-9a-f]{2}){3}")


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """An IPv4 subnet in CIDR form, usable as a virtpool network; ValueError saying why not."""
    try:
        subnet = ipaddress.IPv4Network(text, strict=True)
    except ValueError as err:
        raise ValueError(f"'{text}' is not an IPv4 subnet in CIDR form with its host bits "
                         f"zero, e.g. 10.20.0.0/24 ({err})") from None
    if not MIN_PREFIX <= subnet.prefixlen <= MAX_PREFIX:
        raise ValueError(f"subnet {subnet} must be /{MIN_PREFIX} to /{MAX_PREFIX}")
    if not subnet.is_private or subnet.is_loopback or subnet.is_link_local:
        raise ValueError(f"subnet {subnet} is not a private range (10/8, 172.16/12, 192.168/16)")
    for reserved in RESERVED:
        if subnet.overlaps(reserved):
            raise ValueError(f"subnet {subnet} overlaps {reserved}, the default network's")
    return subnet


def gateway_of(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The bridge's address: the subnet's first host address."""
    return subnet.network_address + 1


class NetworkSpec(BaseModel):
    """A network to create."""

    model_config = REQUEST

    name: Name = Field(description=NAME_RULE)
    subnet: str | None = Field(default=None, description="IPv4 CIDR, e.g. 10.20.0.0/24 "
                               "(default: a free /24 of 10.20.0.0/16)")
    nat: bool = Field(default=False, description="masquerade egress through the host")

    @field_validator("subnet")
    @classmethod
    def _check_subnet(cls, value: str | None) -> str | None:
        return None if value is None else str(parse_subnet(value))


class NicView(BaseModel):
    """One NIC: the network it is on, its MAC and its address."""

    network: str
    mac: str
    address: str
    vm: str | None = None


class NetworkView(BaseModel):
    name: str
    project: str
    subnet: str
    gateway: str
    nat: bool
    vni: int
    mtu: int
    nics: list[NicView] = Field(default_factory=list)


class NicRequest(BaseModel):
    """``vm create --network NAME[,ip=ADDR]``."""

    model_config = REQUEST

    network: NetworkName
    ip: str | None = None

    @field_validator("ip")
    @classmethod
    def _check_ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise ValueError(f"'{value}' is not an IPv4 address") from None

    @classmethod
    def parse(cls, text: str) -> NicRequest:
        """'lan' or 'lan,ip=10.20.0.5'."""
        return cls(**cls.fields(text))

    @staticmethod
    def fields(text: str) -> dict[str, str]:
        """The fields of 'lan' or 'lan,ip=10.20.0.5', unchecked (the server checks them)."""
        name, _, rest = text.partition(",")
        fields: dict[str, str] = {"network": name}
        for part in filter(None, rest.split(",")):
            key, sep, value = part.partition("=")
            if not sep or key != "ip":
                from virtpool.model.errors import InvalidRequest

                raise InvalidRequest(f"cannot read --network '{text}'",
                                     hint="write NAME or NAME,ip=ADDRESS")
            fields[key] = value
        return fields


# -- what one host must have: the agent's input ------------------------------------------------


class HostNetwork(BaseModel):
    """A network as one host needs to know it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vni: int = Field(ge=1, le=(1 << 24) - 1)
    subnet: str
    nat: bool = False
    mtu: int = Field(default=DEFAULT_MTU, ge=576, le=9000)
    peers: tuple[str, ...] = Field(default=(), description="underlay addresses of the other "
                                   "hosts with VMs on this network")


class HostNic(BaseModel):
    """One NIC of a VM on this host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nic_id: str = Field(pattern=r"^[0-9a-f]{8,32}$")
    vm_id: str
    position: int = Field(ge=0, description="the NIC's place in the VM (net0, net1, ...)")
    vni: int
    mac: str
    address: str
    slot: int = Field(ge=0, description="the VM's number on its host: its QEMU user, the only "
                      "one who may open the tap, follows from it")
    firewall: NicFirewall | None = Field(default=None, description="the rules of its VM's "
                                         "security groups; None: the network's default")

    @field_validator("mac")
    @classmethod
    def _check_mac(cls, value: str) -> str:
        if not _MAC.fullmatch(value):
            raise ValueError(f"'{value}' is not a MAC of QEMU's locally administered 52:54:00 range")
        return value


class HostForward(BaseModel):
    """A VM's ``--port H:G`` on a NAT network: the host's TCP port H goes to ADDRESS:G (DNAT)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vni: int
    host_port: int = Field(ge=1, le=65535)
    guest_port: int = Field(ge=1, le=65535)
    address: str


class HostNetworkInput(BaseModel):
    """Everything the control plane wants of one host's networks (data only: it travels to
    remote agents). The agent converges to exactly this: what is not in it is removed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    networks: tuple[HostNetwork, ...] = ()
    nics: tuple[HostNic, ...] = ()
    forwards: tuple[HostForward, ...] = ()
    underlay: str | None = Field(default=None, description="this host's VXLAN source address")
