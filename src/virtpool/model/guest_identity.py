"""What a guest is told when it becomes another VM than the one it booted as: a VM started from
another VM's memory snapshot, or a warm VM that a create took (control/warm_vms.py).

Its hostname becomes the VM's name (now, and in /etc/hostname), and its clock is set to now: a
guest resumed from a snapshot has the snapshot's time, and a paused one's clock stood still. The
clock needs a command in the guest, set to the second. (The guest agent's guest-set-time would
keep nanoseconds, but it runs the guest's hwclock too, and refuses without one: a second
process under emulation, a fifth of a second per start on a busy host.) A restored guest's
hostname is written through the agent's file calls instead (``HOSTNAME_FILES``): no process to
start in a guest whose emulator has translated none of its code yet.
"""

from __future__ import annotations

SCRIPT = 'hostname "$1" && echo "$1" >/etc/hostname && date -s "@$2" >/dev/null'
CLOCK_SCRIPT = 'date -s "@$1" >/dev/null'
# The kernel's hostname (a write ends at its newline) and the file that names it at boot.
HOSTNAME_FILES = ("/proc/sys/kernel/hostname", "/etc/hostname")


def identity_argv(name: str, now_s: float) -> list[str]:
    """The guest command that gives it ``name`` and the time ``now_s`` (seconds since the epoch)."""
    return ["sh", "-c", SCRIPT, "sh", name, str(round(now_s))]


def clock_argv(now_s: float) -> list[str]:
    """The guest command that sets its clock to ``now_s`` (seconds since the epoch)."""
    return ["sh", "-c", CLOCK_SCRIPT, "sh", str(round(now_s))]
