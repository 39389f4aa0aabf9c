"""Choosing KVM or TCG from a fake /sys/module and /dev/kvm."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtpool.model.errors import InvalidRequest
from virtpool.node.qemu.accel import detect, host_tsc_khz


@pytest.fixture
def sys_module(tmp_path: Path) -> Path:
    root = tmp_path / "sys" / "module"
    root.mkdir(parents=True)
    (root / "kvm").mkdir()  # the generic module is always there when any KVM is
    return root


@pytest.fixture
def dev_kvm(tmp_path: Path) -> Path:
    path = tmp_path / "dev-kvm"
    path.write_bytes(b"")
    path.chmod(0o660)
    return path


def load(sys_module: Path, *modules: str) -> None:
    for module in modules:
        (sys_module / module).mkdir()


class TestAuto:
    @pytest.mark.parametrize("module", ["kvm_intel", "kvm_amd"])
    def test_hardware_kvm_with_usable_dev(
        self, sys_module: Path, dev_kvm: Path, module: str
    ) -> None:
        load(sys_module, module)
        accel, reason = detect(sys_module=sys_module, dev_kvm=dev_kvm)
        assert accel == "kvm"
        assert module in reason

    def test_hardware_kvm_without_dev_kvm(
        self, sys_module: Path, tmp_path: Path
    ) -> None:
        load(sys_module, "kvm_intel")
        accel, reason = detect(sys_module=sys_module, dev_kvm=tmp_path / "missing")
        assert accel == "tcg"
        assert reason

    def test_hardware_kvm_with_dev_kvm_not_accessible(
        self, sys_module: Path, dev_kvm: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """/dev/kvm exists but this user may not open it read-write (not in the kvm group).

        Permission bits cannot show this when the tests run as root, so os.access is faked.
        """
        real_access = os.access
        asked: list[int] = []

        def access(path: object, mode: int, **kwargs: object) -> bool:
            if Path(str(path)) == dev_kvm:
                asked.append(mode)
                return bool(mode & os.R_OK) and not mode & os.W_OK
            return real_access(path, mode, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "access", access)
        load(sys_module, "kvm_intel")
        accel, _ = detect(sys_module=sys_module, dev_kvm=dev_kvm)
        assert accel == "tcg"
        assert asked and all(mode & os.W_OK for mode in asked)

    def test_dev_kvm_without_hardware_module(
        self, sys_module: Path, dev_kvm: Path
    ) -> None:
        accel, reason = detect(sys_module=sys_module, dev_kvm=dev_kvm)
        assert accel == "tcg"
        assert "kvm_intel" in reason or "hardware" in reason

    def test_pvm_only_falls_back_to_tcg(self, sys_module: Path, dev_kvm: Path) -> None:
        load(sys_module, "kvm_pvm")
        accel, reason = detect(sys_module=sys_module, dev_kvm=dev_kvm)
        assert accel == "tcg"
        assert "PVM" in reason

    def test_hardware_wins_over_pvm(self, sys_module: Path, dev_kvm: Path) -> None:
        load(sys_module, "kvm_pvm", "kvm_amd")
        assert detect(sys_module=sys_module, dev_kvm=dev_kvm)[0] == "kvm"

    def test_empty_sys_module(self, tmp_path: Path) -> None:
        accel, reason = detect(
            sys_module=tmp_path / "nothing", dev_kvm=tmp_path / "missing"
        )
        assert accel == "tcg"
        assert "PVM" not in reason

    def test_auto_is_the_default(self, sys_module: Path, dev_kvm: Path) -> None:
        load(sys_module, "kvm_intel")
        assert detect(sys_module=sys_module, dev_kvm=dev_kvm) == detect(
            "auto", sys_module=sys_module, dev_kvm=dev_kvm
        )


class TestForced:
    def test_forced_tcg_even_with_kvm(self, sys_module: Path, dev_kvm: Path) -> None:
        load(sys_module, "kvm_intel")
        accel, reason = detect("tcg", sys_module=sys_module, dev_kvm=dev_kvm)
        assert accel == "tcg"
        assert "forced" in reason

    def test_forced_kvm_with_dev_kvm(self, sys_module: Path, dev_kvm: Path) -> None:
        load(sys_module, "kvm_pvm")  # the user's call, even on PVM
        accel, reason = detect("kvm", sys_module=sys_module, dev_kvm=dev_kvm)
        assert accel == "kvm"
        assert "forced" in reason

    def test_forced_kvm_without_dev_kvm(self, sys_module: Path, tmp_path: Path) -> None:
        load(sys_module, "kvm_intel")
        with pytest.raises(InvalidRequest) as caught:
            detect("kvm", sys_module=sys_module, dev_kvm=tmp_path / "missing")
        assert "/dev/kvm" in caught.value.message
        assert caught.value.hint is not None and "tcg" in caught.value.hint


class TestHostTscKhz:
    def test_reads_first_cpu_mhz(self, tmp_path: Path) -> None:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(
            "processor\t: 0\n"
            "vendor_id\t: GenuineIntel\n"
            "model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n"
            "cpu MHz\t\t: 2199.998\n"
            "cache size\t: 56320 KB\n"
            "\n"
            "processor\t: 1\n"
            "cpu MHz\t\t: 3000.000\n"
        )
        assert host_tsc_khz(cpuinfo) == 2_199_998

    def test_whole_mhz(self, tmp_path: Path) -> None:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text("cpu MHz\t\t: 2400\n")
        assert host_tsc_khz(cpuinfo) == 2_400_000

    def test_missing_line(self, tmp_path: Path) -> None:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 48.00\n")  # e.g. arm64
        assert host_tsc_khz(cpuinfo) is None

    def test_garbage_value(self, tmp_path: Path) -> None:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text("cpu MHz\t\t: unknown\n")
        assert host_tsc_khz(cpuinfo) is None

    def test_missing_file(self, tmp_path: Path) -> None:
        assert host_tsc_khz(tmp_path / "nope") is None
