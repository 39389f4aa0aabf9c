"""The files of one VM on its host: ``<data>/vms/<id>/``.

The directory is private to its owner (0700) because it holds the QMP socket, which is full
control of the VM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VMPaths:
    """Where each file of a VM lives."""

    root: Path

    @property
    def disk(self) -> Path:
        return self.root / "disk.qcow2"

    @property
    def efi_vars(self) -> Path:
        """A UEFI VM's own variable store (its boot entries), copied from OVMF's template."""
        return self.root / "efivars.fd"

    @property
    def seed(self) -> Path:
        """The cloud-init NoCloud seed (an ISO labelled cidata), made anew at each start."""
        return self.root / "seed.iso"

    @property
    def serial_log(self) -> Path:
        return self.root / "serial.log"

    @property
    def console_sock(self) -> Path:
        return self.root / "console.sock"

    @property
    def qmp_sock(self) -> Path:
        return self.root / "qmp.sock"

    @property
    def qga_sock(self) -> Path:
        return self.root / "qga.sock"

    @property
    def qemu_log(self) -> Path:
        """QEMU's own stderr: why it refused to start, or what it complained of later."""
        return self.root / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "qemu.pid"

    @property
    def passt_sock(self) -> Path:
        """Where QEMU reaches passt, the VM's default network."""
        return self.root / "passt.sock"

    @property
    def passt_pidfile(self) -> Path:
        return self.root / "passt.pid"

    @property
    def passt_log(self) -> Path:
        return self.root / "passt.log"

    def sockets(self) -> list[Path]:
        """QEMU's own sockets (passt's is passt's: a VM on a virtpool network has none)."""
        return [self.console_sock, self.qmp_sock, self.qga_sock]

    def create(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
