"""The per-VM object's run state guard and the pure launch resolver (node/vm.py, node/launch.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from virtpool.model.spec import VMSpec
from virtpool.node.images.manifest import FileEntry, Manifest
from virtpool.node.launch import HostFacts, ImageFacts, resolve
from virtpool.node.qemu.argv import build_argv
from virtpool.node.vm import VM, Runstate, StateError
from virtpool.node.vmdir import VMPaths


async def nothing_to_release(vm: VM) -> None:
    return None


def make_vm(tmp_path: Path) -> VM:
    return VM("id1", VMPaths(tmp_path / "id1"), "web", notify=lambda kind, data: None,
              on_gone=nothing_to_release)


def test_a_command_on_a_vm_without_qemu_names_both_states(tmp_path: Path) -> None:
    vm = make_vm(tmp_path)
    with pytest.raises(StateError) as caught:
        asyncio.run(vm.command("query-status"))
    assert caught.value.actual == Runstate.IDLE
    assert caught.value.required == {Runstate.RUNNING}
    assert "has QEMU idle; this needs it running" in caught.value.message


def test_exec_needs_a_running_qemu(tmp_path: Path) -> None:
    with pytest.raises(StateError):
        asyncio.run(make_vm(tmp_path).exec(["true"], 5, None))


def test_attach_without_a_qemu_stays_idle(tmp_path: Path) -> None:
    vm = make_vm(tmp_path)
    assert asyncio.run(vm.attach()) is False
    assert vm.runstate == Runstate.IDLE
    assert asyncio.run(vm.wait_gone(0.01)) is True  # nothing runs: gone already
    asyncio.run(vm.kill())  # idempotent on a VM without QEMU
    assert vm.runstate == Runstate.IDLE


def test_launch_resolver_is_pure_and_feeds_the_argv_builder(tmp_path: Path) -> None:
    manifest = Manifest(name="img", kernel=FileEntry(path="vmlinux", sha256="0" * 64, size=1),
                        initrd=FileEntry(path="initrd.img", sha256="1" * 64, size=1),
                        kernel_args="quiet")
    image = ImageFacts(directory=Path("/images/img"), manifest=manifest, kernel_is_elf=True)
    host = HostFacts(accel="tcg", tsc_khz=2_000_000, qemu_binary="qemu-system-x86_64")
    spec = VMSpec(name="web", image="img", cpus=2, memory_mib=256, max_memory_mib=512,
                  kernel_args="foo=1")
    plan = resolve(spec, image, VMPaths(Path("/data/vms/x")), host)
    assert plan.kernel == Path("/images/img/vmlinux")
    assert plan.initrd == Path("/images/img/initrd.img")
    assert plan.memory_mib == 512  # boots with its ceiling; the balloon takes it down
    assert (plan.cpus, plan.accel, plan.tsc_khz) == (2, "tcg", 2_000_000)
    argv = build_argv(plan)
    assert argv[argv.index("-kernel") + 1] == "/images/img/vmlinux"
    assert "quiet" in argv[argv.index("-append") + 1] and "foo=1" in argv[argv.index("-append") + 1]
