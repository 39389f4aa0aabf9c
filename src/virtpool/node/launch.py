"""Resolve a VM's spec to a launch plan on this host. Pure: no I/O.

The façade (``node/agent.py``) gathers the facts — the image's manifest and directory, whether
its kernel is an ELF, the host's accelerator and TSC rate — and this module combines them with
the spec. The plan then goes to ``node/qemu/argv.build_argv``. Keeping this pure lets tests
and ``bench/boot.py`` build exactly the argv virtpool runs, without a running agent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from virtpool.model.spec import VMSpec
from virtpool.node.images.manifest import Manifest
from virtpool.node.qemu.argv import LaunchPlan, NicPlan
from virtpool.node.vmdir import VMPaths


@dataclass(frozen=True)
class HostFacts:
    """What a launch needs to know about the host."""

    accel: Literal["kvm", "tcg"]  # resolved already: the host's default or the spec's forced one
    tsc_khz: int | None
    qemu_binary: str


@dataclass(frozen=True)
class ImageFacts:
    """Where an image lives on this host, and what its manifest says."""

    directory: Path
    manifest: Manifest
    kernel_is_elf: bool


def wants_seed(spec: VMSpec, manifest: Manifest) -> bool:
    """A VM gets a cloud-init seed when its user gave one, or its image reads one (the
    built-in debian-12: without a seed its cloud-init would find no datasource)."""
    return spec.cloud_init is not None or manifest.source.get("cloud_init") == "nocloud"


def default_mac(vm_id: str) -> str:
    """The MAC of a VM's NIC on the default network: its own (derived from its id, so stable
    across starts, and new for a clone), in QEMU's 52:54:00 range."""
    digest = hashlib.sha256(vm_id.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def resolve(spec: VMSpec, image: ImageFacts, paths: VMPaths, host: HostFacts, *,
            nics: tuple[NicPlan, ...] = ()) -> LaunchPlan:
    """The launch plan of ``spec`` on this host, with the NICs the host gives it."""
    manifest = image.manifest
    return LaunchPlan(
        name=spec.name,
        cpus=spec.cpus,
        memory_mib=spec.boot_memory_mib,
        kernel=image.directory / manifest.kernel.path if manifest.kernel else None,
        machine="q35" if manifest.machine == "q35" else "microvm",
        firmware="uefi" if manifest.firmware == "uefi" else ("bios" if manifest.firmware else None),
        initrd=image.directory / manifest.initrd.path if manifest.initrd else None,
        kernel_is_elf=image.kernel_is_elf,
        paths=paths,
        accel=host.accel,
        nics=nics,
        image_kernel_args=manifest.kernel_args,
        user_kernel_args=spec.kernel_args,
        tsc_khz=host.tsc_khz,
        disk_iops=spec.disk_iops,
        disk_bps=spec.disk_bps,
        seed=paths.seed if wants_seed(spec, manifest) else None,
        qemu_binary=host.qemu_binary,
    )
