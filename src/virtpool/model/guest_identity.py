"""What a guest is told when it becomes another VM than the one it booted as: a VM started from
another VM's memory snapshot, or a warm VM that a create took (control/warm_vms.py).

Its hostname becomes the VM's name (now, and in /etc/hostname), and its clock is set to now: a
guest resumed from a snapshot has the snapshot's time, and a paused one's clock stood still.
One command in the guest does both. (The guest agent's guest-set-time would keep nanoseconds,
but it runs the guest's hwclock too, and refuses without one: a second process under
emulation, a fifth of a second per start on a busy host.) The clock is set to the second.
"""

from __future__ import annotations

SCRIPT = 'hostname "$1" && echo "$1" >/etc/hostname && date -s "@$2" >/dev/null'


def identity_argv(name: str, now_s: float) -> list[str]:
    """The guest command that gives it ``name`` and the time ``now_s`` (seconds since the epoch)."""
    return ["sh", "-c", SCRIPT, "sh", name, str(round(now_s))]
