"""Open a tap device for a VM's QEMU: the agent attaches, QEMU inherits the descriptor.

``/dev/net/tun`` is root's alone on our hosts (0600), and it should stay so: a QEMU that opened
it itself could attach to any tap it can name. The agent, as root, attaches to the VM's own tap
and hands QEMU only that descriptor (``-netdev tap,fd=N``), as libvirt does.
"""

from __future__ import annotations

import fcntl
import os
import struct

from virtpool.model.errors import OperationFailed

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def open_tap(name: str) -> int:
    """A descriptor attached to the existing tap ``name`` (close-on-exec off: for QEMU)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        request = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, request)
    except OSError as err:
        os.close(fd)
        raise OperationFailed(f"cannot attach to tap {name}: {err.strerror}",
                              hint="the agent must run as root; its network converge makes the tap") from err
    return fd
