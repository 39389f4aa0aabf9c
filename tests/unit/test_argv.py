"""QEMU command line built from a launch plan (pure: nothing is run)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from virtpool.model.spec import PortForward
from virtpool.node.net.passt import passt_argv
from virtpool.node.qemu.argv import LaunchPlan, NicPlan, build_argv, kernel_cmdline, opt_value
from virtpool.node.vmdir import VMPaths


def make_plan(**overrides: object) -> LaunchPlan:
    fields: dict[str, object] = {
        "name": "web1",
        "cpus": 2,
        "memory_mib": 512,
        "kernel": Path("/data/images/default/vmlinux"),
        "paths": VMPaths(Path("/data/vms/abc123")),
        "accel": "tcg",
        "initrd": Path("/data/images/default/initrd.img"),
    }
    fields.update(overrides)
    return LaunchPlan(**fields)  # type: ignore[arg-type]


def values_of(argv: list[str], flag: str) -> list[str]:
    """Every value that follows ``flag`` in ``argv``."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def value_of(argv: list[str], flag: str) -> str:
    values = values_of(argv, flag)
    assert len(values) == 1, f"{flag} appears {len(values)} times in {argv}"
    return values[0]


class TestOptValue:
    def test_commas_are_doubled(self) -> None:
        assert opt_value("/a,b,,c") == "/a,,b,,,,c"

    def test_path_without_commas_unchanged(self) -> None:
        assert opt_value(Path("/data/vms/x/qmp.sock")) == "/data/vms/x/qmp.sock"


class TestMachine:
    def test_elf_kernel_disables_option_roms(self) -> None:
        argv = build_argv(make_plan(kernel_is_elf=True))
        machine = value_of(argv, "-M").split(",")
        assert machine[0] == "microvm"
        assert "x-option-roms=off" in machine
        assert "rtc=on" in machine

    def test_bzimage_keeps_option_roms(self) -> None:
        argv = build_argv(make_plan(kernel_is_elf=False))
        machine = value_of(argv, "-M").split(",")
        assert machine[0] == "microvm"
        assert not any(opt.startswith("x-option-roms") for opt in machine)
        assert "rtc=on" in machine


class TestAccel:
    def test_tcg_uses_cpu_max(self) -> None:
        argv = build_argv(make_plan(accel="tcg"))
        # The translation cache is bounded: QEMU's default would let it grow to 1 GiB.
        assert value_of(argv, "-accel") == "tcg,tb-size=64"
        assert value_of(argv, "-cpu") == "max"

    def test_kvm_uses_cpu_host(self) -> None:
        argv = build_argv(make_plan(accel="kvm"))
        assert value_of(argv, "-accel") == "kvm"
        assert value_of(argv, "-cpu") == "host"

    def test_smp_and_memory(self) -> None:
        argv = build_argv(make_plan(cpus=3, memory_mib=768))
        assert value_of(argv, "-smp") == "3"
        assert value_of(argv, "-m") == "768M"


class TestTscHint:
    def test_tcg_with_known_rate_adds_hint(self) -> None:
        cmdline = kernel_cmdline(make_plan(accel="tcg", tsc_khz=2_400_000))
        assert "tsc_early_khz=2400000" in cmdline.split()

    def test_tcg_with_unknown_rate_has_no_hint(self) -> None:
        cmdline = kernel_cmdline(make_plan(accel="tcg", tsc_khz=None))
        assert "tsc_early_khz" not in cmdline

    def test_kvm_never_gets_hint(self) -> None:
        cmdline = kernel_cmdline(make_plan(accel="kvm", tsc_khz=2_400_000))
        assert "tsc_early_khz" not in cmdline

    def test_hint_reaches_append(self) -> None:
        argv = build_argv(make_plan(accel="tcg", tsc_khz=1_999_999))
        assert "tsc_early_khz=1999999" in value_of(argv, "-append").split()


class TestKernelCmdline:
    def test_virtpool_then_image_then_user(self) -> None:
        plan = make_plan(
            image_kernel_args="quiet ro", user_kernel_args="loglevel=7 foo=bar"
        )
        cmdline = kernel_cmdline(plan)
        words = cmdline.split()
        # virtpool's own arguments come first.
        assert words[0] == "console=ttyS0"
        assert "virtpool.hostname=web1" in words
        virtpool_last = words.index("virtpool.hostname=web1")
        image_at = words.index("quiet")
        user_at = words.index("foo=bar")
        assert virtpool_last < image_at < user_at
        assert cmdline.endswith("quiet ro loglevel=7 foo=bar")
        # the user's loglevel overrides virtpool's because it comes later
        assert words.index("loglevel=3") < words.index("loglevel=7")

    def test_empty_extras_leave_no_double_spaces(self) -> None:
        cmdline = kernel_cmdline(make_plan(image_kernel_args="", user_kernel_args=""))
        assert "  " not in cmdline
        assert cmdline == cmdline.strip()

    def test_only_user_args(self) -> None:
        cmdline = kernel_cmdline(make_plan(user_kernel_args="init=/bin/sh"))
        assert cmdline.split()[-1] == "init=/bin/sh"
        assert "  " not in cmdline

    def test_cmdline_is_one_argv_element(self) -> None:
        plan = make_plan(user_kernel_args="a=1 b=2")
        argv = build_argv(plan)
        assert value_of(argv, "-append") == kernel_cmdline(plan)

    def test_panic_and_reboot_make_qemu_exit(self) -> None:
        argv = build_argv(make_plan())
        assert "-no-reboot" in argv
        assert "panic=-1" in value_of(argv, "-append").split()


class TestNics:
    SOCK = Path("/data/vms/abc123/passt.sock")

    def test_default_network_is_passt_never_qemu_user_mode(self) -> None:
        argv = build_argv(make_plan(nics=(NicPlan(socket=self.SOCK),)))
        netdev = value_of(argv, "-netdev").split(",")
        assert netdev[:3] == ["stream", "id=net0", "server=off"]
        assert f"addr.path={self.SOCK}" in netdev and "addr.type=unix" in netdev
        assert not any(v.startswith("user") for v in values_of(argv, "-netdev"))
        assert "virtio-net-device,netdev=net0" in values_of(argv, "-device")

    def test_taps_are_vhost_off_with_their_mac(self) -> None:
        nics = (NicPlan(tap="nwt1a"), NicPlan(tap="nwt1b", mac="52:54:00:12:34:56"))
        argv = build_argv(make_plan(nics=nics))
        assert values_of(argv, "-netdev") == [
            "tap,id=net0,ifname=nwt1a,script=no,downscript=no,vhost=off",
            "tap,id=net1,ifname=nwt1b,script=no,downscript=no,vhost=off",
        ]
        devices = values_of(argv, "-device")
        assert "virtio-net-device,netdev=net0" in devices
        assert "virtio-net-device,netdev=net1,mac=52:54:00:12:34:56" in devices

    def test_no_nics_no_netdev(self) -> None:
        assert values_of(build_argv(make_plan()), "-netdev") == []

    def test_socket_path_commas_doubled(self) -> None:
        netdev = value_of(build_argv(make_plan(nics=(NicPlan(socket=Path("/d/a,b/s")),))), "-netdev")
        assert "addr.path=/d/a,,b/s" in netdev


class TestPasstArgv:
    def argv(self, *ports: PortForward) -> list[str]:
        d = Path("/data/vms/abc123")
        return passt_argv(d / "passt.sock", d / "passt.pid", d / "passt.log", ports)

    def test_gateway_is_not_the_host(self) -> None:
        argv = self.argv()
        assert "--no-map-gw" in argv and "--one-off" in argv
        assert value_of(argv, "--address") == "10.0.2.15"
        assert value_of(argv, "--gateway") == "10.0.2.2"

    def test_each_port_bound_to_loopback(self) -> None:
        argv = self.argv(PortForward(host=8080, guest=80), PortForward(host=2222, guest=22))
        assert value_of(argv, "--tcp-ports") == "127.0.0.1/8080:80,127.0.0.1/2222:22"

    def test_no_ports_no_forwards(self) -> None:
        assert "--tcp-ports" not in self.argv()


class TestPathsEscaped:
    ROOT = Path("/data/vms/a,b")

    def argv(self) -> list[str]:
        return build_argv(make_plan(paths=VMPaths(self.ROOT)))

    def test_drive_file_commas_doubled(self) -> None:
        drive = value_of(self.argv(), "-drive")
        assert drive.startswith("file=/data/vms/a,,b/disk.qcow2,format=qcow2,")
        assert "if=none" in drive

    def test_qmp_sockets_commas_doubled(self) -> None:
        qmps = values_of(self.argv(), "-qmp")
        assert qmps == [
            "unix:/data/vms/a,,b/qmp.sock,server=on,wait=off",
        ]

    def test_chardev_paths_commas_doubled(self) -> None:
        chardevs = values_of(self.argv(), "-chardev")
        console = next(c for c in chardevs if "id=console0" in c)
        qga = next(c for c in chardevs if "id=qga0" in c)
        assert "path=/data/vms/a,,b/console.sock," in console
        assert "logfile" not in console  # the agent writes the log, under its cap
        assert "path=/data/vms/a,,b/qga.sock," in qga

    def test_plain_path_options_not_escaped(self) -> None:
        # -pidfile and -kernel take a bare file name, not a key=value list.
        argv = build_argv(
            make_plan(
                paths=VMPaths(self.ROOT), kernel=Path("/k,1/vmlinux"), initrd=None
            )
        )
        assert value_of(argv, "-pidfile") == "/data/vms/a,b/qemu.pid"
        assert value_of(argv, "-kernel") == "/k,1/vmlinux"


class TestShapeOfArgv:
    def test_all_str_and_binary_first(self) -> None:
        argv = build_argv(make_plan(qemu_binary="/usr/bin/qemu-system-x86_64"))
        assert isinstance(argv, list)
        assert all(isinstance(a, str) for a in argv)
        assert argv[0] == "/usr/bin/qemu-system-x86_64"

    def test_no_element_is_a_shell_command(self) -> None:
        argv = build_argv(make_plan(user_kernel_args="a=1"))
        assert argv.count("qemu-system-x86_64") == 1
        for arg in argv[1:]:
            assert "qemu-system" not in arg
            assert not arg.startswith("-") or " " not in arg, arg
        # the only element with spaces is the kernel command line
        assert [a for a in argv if " " in a] == [value_of(argv, "-append")]

    def test_foreground_with_a_pidfile_and_the_full_sandbox(self) -> None:
        plan = make_plan()
        argv = build_argv(plan)
        # -daemonize would be killed by the sandbox's spawn=deny (it forks after the filter).
        assert "-daemonize" not in argv
        assert value_of(argv, "-pidfile") == str(plan.paths.pidfile)
        assert value_of(argv, "-sandbox") == (
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")

    def test_sandbox_can_be_left_out(self) -> None:
        assert "-sandbox" not in build_argv(make_plan(sandbox=False))

    def test_disk_throttling_at_boot(self) -> None:
        drive = value_of(build_argv(make_plan(disk_iops=100, disk_bps=1 << 20)), "-drive")
        assert drive.endswith(",throttling.iops-total=100,throttling.bps-total=1048576")
        assert "throttling" not in value_of(build_argv(make_plan()), "-drive")

    def test_initrd_present(self) -> None:
        argv = build_argv(make_plan(initrd=Path("/img/initrd.img")))
        assert value_of(argv, "-initrd") == "/img/initrd.img"

    def test_initrd_omitted_when_none(self) -> None:
        argv = build_argv(make_plan(initrd=None))
        assert "-initrd" not in argv

    def test_one_qmp_socket_for_the_one_session(self) -> None:
        plan = make_plan()
        qmps = values_of(build_argv(plan), "-qmp")
        assert len(qmps) == 1
        assert qmps[0].startswith(f"unix:{plan.paths.qmp_sock},")
        assert all("server=on" in q and "wait=off" in q for q in qmps)

    def test_no_default_devices_or_display(self) -> None:
        argv = build_argv(make_plan())
        assert "-nodefaults" in argv
        assert "-no-user-config" in argv
        assert value_of(argv, "-display") == "none"

    def test_extra_args_appended_last(self) -> None:
        argv = build_argv(make_plan(extra=("-S", "-trace", "foo")))
        assert argv[-3:] == ["-S", "-trace", "foo"]

    def test_guest_agent_port_name(self) -> None:
        devices = values_of(build_argv(make_plan()), "-device")
        assert "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0" in devices

    def test_name_sets_guest_and_process(self) -> None:
        argv = build_argv(make_plan(name="db-2"))
        assert value_of(argv, "-name") == "guest=db-2,process=virtpool-db-2"

    def test_plan_is_not_mutated(self) -> None:
        plan = make_plan(nics=(NicPlan(tap="nwt0"),))
        before = dataclasses.asdict(plan)
        build_argv(plan)
        build_argv(plan)
        assert dataclasses.asdict(plan) == before
        assert build_argv(plan) == build_argv(plan)


@pytest.mark.parametrize("accel", ["kvm", "tcg"])
def test_same_disk_and_console_for_both_accels(accel: str) -> None:
    plan = make_plan(accel=accel)
    argv = build_argv(plan)
    assert value_of(argv, "-serial") == "chardev:console0"
    assert value_of(argv, "-drive").startswith(f"file={plan.paths.disk},format=qcow2")


class TestFirmwareBoot:
    def test_q35_bios_boots_the_disk_with_pci_devices_and_no_kernel(self) -> None:
        argv = build_argv(make_plan(machine="q35", firmware="bios", kernel=None, initrd=None,
                                    nics=(NicPlan(socket=Path("/run/p.sock")),)))
        assert value_of(argv, "-M") == "q35"
        assert "-kernel" not in argv and "-append" not in argv and "-initrd" not in argv
        devices = values_of(argv, "-device")
        assert {d.split(",")[0] for d in devices} >= {
            "virtio-serial-pci", "virtio-net-pci", "virtio-balloon-pci", "virtio-blk-pci"}
        assert not any(d.startswith("virtio-") and d.split(",")[0].endswith("-device") for d in devices)
        assert any(d.startswith("virtio-blk-pci,") and "bootindex=0" in d for d in devices)
        assert not any("pflash" in d for d in values_of(argv, "-drive"))

    def test_q35_uefi_has_readonly_ovmf_code_and_the_vms_own_vars(self) -> None:
        plan = make_plan(machine="q35", firmware="uefi", kernel=None, initrd=None)
        flashes = [d for d in values_of(build_argv(plan), "-drive") if "if=pflash" in d]
        assert len(flashes) == 2
        assert "readonly=on" in flashes[0] and "OVMF_CODE_4M.fd" in flashes[0]
        assert f"file={plan.paths.efi_vars}" in flashes[1] and "readonly" not in flashes[1]

    def test_microvm_keeps_direct_boot_and_mmio(self) -> None:
        argv = build_argv(make_plan())
        assert value_of(argv, "-M").startswith("microvm")
        assert "-kernel" in argv
        assert any(d.startswith("virtio-blk-device,") for d in values_of(argv, "-device"))

    def test_impossible_combinations_are_refused(self) -> None:
        with pytest.raises(ValueError, match="give it a kernel"):
            build_argv(make_plan(kernel=None))
        with pytest.raises(ValueError, match="direct kernel boot runs on microvm"):
            build_argv(make_plan(machine="q35", firmware="bios"))


def test_a_start_from_a_memory_snapshot_loads_it_before_the_vcpus_run() -> None:
    plain = build_argv(make_plan())
    restored = build_argv(make_plan(loadvm="warm"))
    assert "-loadvm" not in plain
    assert restored[restored.index("-loadvm") + 1] == "warm"
    assert [a for a in restored if a not in ("-loadvm", "warm")] == plain
