"""Build QEMU's command line from a launch plan. Pure: no I/O, nothing is run.

The result is an argv list, never a shell string. QEMU runs in the foreground (no
``-daemonize``: it conflicts with the seccomp sandbox, see ``node/sandbox/seccomp.py``); the
agent detaches it. The same list is what ``bench/boot.py``
runs bare as its baseline, so anything virtpool adds to a boot shows up in the ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from virtpool.node.sandbox.seccomp import sandbox_argv
from virtpool.node.vmdir import VMPaths

GUEST_AGENT_PORT = "org.qemu.guest_agent.0"
# Names that QMP commands address: the drive (block_resize), the disk device
# (block_set_io_throttle) and the balloon (its statistics live under /machine/peripheral/<id>).
DRIVE_ID = "disk0"
DISK_DEVICE_ID = "vda"
SEED_DRIVE_ID = "seed0"
BALLOON_ID = "balloon0"


@dataclass(frozen=True)
class NicPlan:
    """One virtio-net NIC and its host end: passt's socket (the default network) or a tap,
    named, or already opened by the agent and inherited as ``fd``."""

    socket: Path | None = None
    tap: str | None = None
    mac: str | None = None
    fd: int | None = None


Machine = Literal["microvm", "q35"]
# Debian's ovmf package: the UEFI code (read-only, shared) and the template of the variable
# store each UEFI VM gets a copy of (its boot entries are its own).
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS_TEMPLATE = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@dataclass(frozen=True)
class LaunchPlan:
    """Everything QEMU needs to start one VM, already resolved to host paths."""

    name: str
    cpus: int
    memory_mib: int
    kernel: Path | None  # None: the firmware boots the disk (machine q35)
    paths: VMPaths
    accel: Literal["kvm", "tcg"]
    # microvm boots a kernel directly (the fast path); q35 runs SeaBIOS ("bios") or OVMF
    # ("uefi") for a disk with its own bootloader, with PCI devices and ACPI.
    machine: Machine = "microvm"
    firmware: Literal["bios", "uefi"] | None = None
    initrd: Path | None = None
    kernel_is_elf: bool = True
    nics: tuple[NicPlan, ...] = ()
    image_kernel_args: str = ""
    user_kernel_args: str = ""
    tsc_khz: int | None = None
    disk_iops: int | None = None
    disk_bps: int | None = None
    seed: Path | None = None  # a cloud-init seed, attached read-only after the root disk
    qemu_binary: str = "qemu-system-x86_64"
    sandbox: bool = True
    # A memory snapshot inside the disk to start from (QEMU loads its RAM and devices before
    # the vCPUs run): a VM made with --from-snapshot, on its first start.
    loadvm: str | None = None
    extra: tuple[str, ...] = field(default=())


def opt_value(value: str | Path) -> str:
    """Escape a value for a QEMU ``key=value,...`` option: commas are doubled."""
    return str(value).replace(",", ",,")


def kernel_cmdline(plan: LaunchPlan) -> str:
    """virtpool's arguments first, then the image's, then the user's (later ones win)."""
    args = [
        "console=ttyS0",
        "loglevel=3",  # each console character costs a VM exit under TCG
        "reboot=t",
        # A panicking guest reboots; -no-reboot turns a reboot into QEMU exiting, and the agent
        # starts a guest again that had booted (a boot that panics fails at once).
        "panic=-1",
        f"virtpool.hostname={plan.name}",
    ]
    if plan.accel == "tcg" and plan.tsc_khz:
        args.append(f"tsc_early_khz={plan.tsc_khz}")
    if any(nic.tap for nic in plan.nics):
        args.append("virtpool.net=dhcp")  # the image's init takes its addresses by DHCP
    return " ".join(a for a in [*args, plan.image_kernel_args, plan.user_kernel_args] if a)


def _machine(plan: LaunchPlan) -> str:
    if plan.machine == "q35":
        return "q35"
    # Option ROMs are only needed to boot a bzImage; an ELF vmlinux enters through PVH.
    options = ["microvm", "rtc=on"]
    if plan.kernel_is_elf:
        options.insert(1, "x-option-roms=off")
    return ",".join(options)


def _device(plan: LaunchPlan, kind: str) -> str:
    """A virtio device on the machine's transport: MMIO on microvm, PCI on q35."""
    return f"virtio-{kind}-{'pci' if plan.machine == 'q35' else 'device'}"


def _boot_args(plan: LaunchPlan) -> list[str]:
    """How the guest starts: the kernel directly, or the firmware from the disk."""
    if plan.machine == "q35":
        if plan.kernel is not None:
            raise ValueError("q35 boots through its firmware; a direct kernel boot runs on microvm")
        if plan.firmware == "uefi":
            return [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={opt_value(OVMF_CODE)}",
                "-drive", f"if=pflash,format=raw,unit=1,file={opt_value(plan.paths.efi_vars)}",
            ]
        return []  # q35 loads SeaBIOS by itself
    if plan.kernel is None:
        raise ValueError("microvm has no firmware that boots a disk: give it a kernel")
    argv = ["-kernel", str(plan.kernel)]
    if plan.initrd is not None:
        argv += ["-initrd", str(plan.initrd)]
    return [*argv, "-append", kernel_cmdline(plan)]


def _nic_args(index: int, nic: NicPlan, plan: LaunchPlan) -> list[str]:
    netdev = f"net{index}"
    if nic.tap is not None:
        # No /dev/vhost-net on our hosts (QEMU-NOTES.md); the agent made the tap for this VM's user.
        end = f"fd={nic.fd}" if nic.fd is not None else f"ifname={opt_value(nic.tap)},script=no,downscript=no"
        backend = f"tap,id={netdev},{end},vhost=off"
    elif nic.socket is not None:
        backend = f"stream,id={netdev},server=off,addr.type=unix,addr.path={opt_value(nic.socket)}"
    else:
        raise ValueError(f"NIC {index} has neither a tap nor a socket")
    device = f"{_device(plan, 'net')},netdev={netdev}" + (f",mac={nic.mac}" if nic.mac else "")
    return ["-netdev", backend, "-device", device]


def _throttling(plan: LaunchPlan) -> str:
    limits = [("iops-total", plan.disk_iops), ("bps-total", plan.disk_bps)]
    return "".join(f",throttling.{key}={value}" for key, value in limits if value)


def build_argv(plan: LaunchPlan) -> list[str]:
    """The full argv for ``plan``; ``argv[0]`` is the QEMU binary."""
    paths = plan.paths
    argv = [
        plan.qemu_binary,
        "-name", f"guest={opt_value(plan.name)},process=virtpool-{plan.name}",
        "-M", _machine(plan),
        # TCG's translation cache defaults to 1 GiB of address space that fills as the guest
        # runs new code; 64 MiB holds our guests' working set and bounds QEMU's overhead.
        "-accel", "tcg,tb-size=64" if plan.accel == "tcg" else "kvm",
        "-cpu", "host" if plan.accel == "kvm" else "max",
        "-smp", str(plan.cpus),
        "-m", f"{plan.memory_mib}M",
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-no-reboot",
        *_boot_args(plan),
        # The serial console is a socket that the agent alone reads (node/console.py): it
        # writes the log for `vm logs` under a hard cap, and shares the line with `vm console`.
        # No logfile= here: QEMU would write it as fast as the guest floods it.
        "-chardev",
        f"socket,id=console0,path={opt_value(paths.console_sock)},server=on,wait=off",
        "-serial", "chardev:console0",
        "-device", _device(plan, "serial"),
        "-chardev", f"socket,id=qga0,path={opt_value(paths.qga_sock)},server=on,wait=off",
        "-device", f"virtserialport,chardev=qga0,name={GUEST_AGENT_PORT}",
    ]
    for index, nic in enumerate(plan.nics):
        argv += _nic_args(index, nic, plan)
    argv += [
        "-device", f"{_device(plan, 'balloon')},id={BALLOON_ID}",
        "-drive",
        f"file={opt_value(paths.disk)},format=qcow2,if=none,id={DRIVE_ID},discard=unmap"
        + _throttling(plan),
        # bootindex: SeaBIOS and OVMF boot this disk first (microvm has no firmware to tell).
        "-device", f"{_device(plan, 'blk')},drive={DRIVE_ID},id={DISK_DEVICE_ID}"
        + (",bootindex=0" if plan.machine == "q35" else ""),
    ]
    if plan.seed is not None:
        # After the root disk: that one stays the guest's first (vda, and the firmware's hd0).
        argv += [
            "-drive", f"file={opt_value(plan.seed)},format=raw,if=none,id={SEED_DRIVE_ID},readonly=on",
            "-device", f"{_device(plan, 'blk')},drive={SEED_DRIVE_ID}",
        ]
    argv += [
        "-qmp", f"unix:{opt_value(paths.qmp_sock)},server=on,wait=off",
        "-pidfile", str(paths.pidfile),
    ]
    if plan.loadvm is not None:
        argv += ["-loadvm", plan.loadvm]
    if plan.sandbox:
        argv += sandbox_argv()
    argv += list(plan.extra)
    return argv
