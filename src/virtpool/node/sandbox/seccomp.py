"""QEMU's own syscall filter (``-sandbox``), as an argv fragment.

QEMU installs the filter itself, for every thread, early in its start-up: in QEMU 7.2
``qemu_process_early_options()`` (which applies ``-sandbox``) runs *before*
``qemu_maybe_daemonize()``. Two of the options therefore kill a ``-daemonize``d QEMU with
SIGSYS (observed on QEMU 7.2, Debian 12): ``spawn=deny`` forbids the fork (audit: syscall 56,
clone) and ``elevateprivileges=deny`` the daemon's setsid() (syscall 112). virtpool therefore
starts QEMU in the foreground and detaches it itself (new session, stdio to files), which lets
it use the whole filter.

This module only builds arguments; it runs nothing.
"""

from __future__ import annotations

# obsolete: old syscalls QEMU never needs; elevateprivileges: set*uid/set*gid/setsid…;
# spawn: fork/vfork/execve; resourcecontrol: sched_setaffinity/setpriority/… (the host's
# cgroup and scheduler settings stay the host's).
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def sandbox_argv() -> list[str]:
    """``["-sandbox", SANDBOX]``: for a QEMU started without ``-daemonize``."""
    return ["-sandbox", SANDBOX]
