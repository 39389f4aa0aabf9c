"""Which accelerator QEMU should use on this host.

``/dev/kvm`` opening is not enough: on the project's machines it is backed by PVM
(``kvm_pvm``), under which stock kernels crawl (QEMU-NOTES.md). Only a hardware-assisted KVM
module counts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from virtpool.model.errors import InvalidRequest

HARDWARE_KVM_MODULES = ("kvm_intel", "kvm_amd")


def detect(
    requested: Literal["auto", "kvm", "tcg"] = "auto",
    *,
    sys_module: Path = Path("/sys/module"),
    dev_kvm: Path = Path("/dev/kvm"),
) -> tuple[Literal["kvm", "tcg"], str]:
    """Return the accelerator and a sentence saying why it was chosen."""
    hardware = [m for m in HARDWARE_KVM_MODULES if (sys_module / m).exists()]
    kvm_usable = bool(hardware) and os.access(dev_kvm, os.R_OK | os.W_OK)
    if requested == "tcg":
        return "tcg", "forced by the user"
    if requested == "kvm":
        if not dev_kvm.exists():
            raise InvalidRequest(
                "KVM was asked for but /dev/kvm does not exist",
                hint="load kvm_intel or kvm_amd, or use --accel tcg",
            )
        return "kvm", "forced by the user"
    if kvm_usable:
        return "kvm", f"hardware-assisted KVM ({hardware[0]}) is loaded"
    if (sys_module / "kvm_pvm").exists():
        return "tcg", "KVM here is PVM, which is slower than TCG for stock kernels"
    return "tcg", "no hardware-assisted KVM module (kvm_intel/kvm_amd) is loaded"


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """The host's TSC rate in kHz, for the guest's ``tsc_early_khz`` hint under TCG.

    Without the hint about one TCG boot in five hangs calibrating the TSC (QEMU-NOTES.md).
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("cpu MHz"):
            try:
                return int(float(line.split(":", 1)[1]) * 1000)
            except ValueError:
                return None
    return None
