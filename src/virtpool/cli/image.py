"""`virtpool image …`"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.common import ImageName, JsonFlag, client
from virtpool.cli.operation import follow

app = typer.Typer(help="Guest images: build, import, list, delete.", no_args_is_help=True)



@app.command("build")
def build(
    name: Annotated[str, typer.Argument()] = "default",
    wait_timeout: Annotated[float, typer.Option("--wait-timeout", help="seconds to follow the build")] = 1800.0,
    json: JsonFlag = False,
) -> None:
    """Build a built-in image from Debian packages; cached, rebuilt when its recipe changes.

    default: a kernel and initramfs (busybox, qemu-guest-agent) that boot in seconds.
    debian-12: a Debian 12 disk with GRUB, systemd, cloud-init, qemu-guest-agent and openssh
    (a few minutes to build; boots with BIOS on q35).

    Examples:

        virtpool image build default

        virtpool image build default --wait-timeout 900
    """
    with output.errors():
        api = client()
        op = follow(api, api.build_image(name), wait_timeout, json)
    if json:
        output.emit_json(op)
    if op.status == "failed":
        output.fail(f"building image '{name}' failed: {op.error}")
    if not json:
        built = (op.result or {}).get("built", True)
        output.out.print(f"image '{name}' " + ("built" if built else "is up to date (cached)"))


@app.command("list")
def list_(json: JsonFlag = False) -> None:
    """The images on this host.

    Examples:

        virtpool image list

        virtpool image list --json
    """
    with output.errors():
        images = client().images()
    if json:
        return output.emit_json(images)
    output.table(
        ["NAME", "KERNEL", "INITRD", "DISK", "SIZE", "CREATED"],
        [(i.name, "yes", "yes" if i.initrd else "-", i.disk_format or "-",
          f"{i.size / 2**20:.1f} MiB", i.created_at[:19]) for i in images],
    )


@app.command("show")
def show(name: ImageName, json: JsonFlag = False) -> None:
    """One image: its files and their checksums.

    Examples:

        virtpool image show default
    """
    with output.errors():
        image = client().image(name)
    if json:
        return output.emit_json(image)
    rows: list[tuple[str, object]] = [("name", image.name), ("created", image.created_at)]
    for label, entry in (("kernel", image.kernel), ("initrd", image.initrd), ("disk", image.disk)):
        if entry is not None:
            rows.append((label, f"{entry.path}  {entry.size} bytes  sha256:{entry.sha256}"))
    rows += [("kernel args", image.kernel_args or "-"),
             ("machine", image.machine + (f" ({image.firmware})" if image.firmware else " (direct kernel boot)")),
             ("boot timeout", f"{image.boot_timeout_s:g}s" if image.boot_timeout_s else "the server's")]
    rows += [(f"source.{k}", v) for k, v in sorted(image.source.items())]
    output.fields(rows)


@app.command("delete")
def delete(name: ImageName, json: JsonFlag = False) -> None:
    """Delete an image no VM uses.

    Examples:

        virtpool image delete old-kernel
    """
    with output.errors():
        client().delete_image(name)
    if json:
        return output.emit_json({"deleted": name})
    output.print_line(f"image '{name}' deleted")


@app.command("import")
def import_(
    name: str,
    kernel: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True,
                                                help="kernel to boot directly (microvm)")] = None,
    initrd: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True)] = None,
    disk: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True,
                                                 help="qcow2 or raw root disk")] = None,
    kernel_args: Annotated[str, typer.Option("--kernel-args", help="appended to the kernel command line")] = "",
    firmware: Annotated[str | None, typer.Option(
        help="without --kernel: boot the disk's own bootloader with bios (SeaBIOS) or uefi (OVMF)")] = None,
    json: JsonFlag = False,
) -> None:
    """Import your own kernel, initramfs and root disk, or a bootable disk alone (copied in).

    Examples:

        virtpool image import tiny --kernel ./vmlinuz --initrd ./initrd.img --kernel-args 'console=ttyS0'

        virtpool image import debian --disk ./debian.qcow2 --firmware uefi
    """
    with output.errors():
        image = client().import_image(name, kernel=kernel, initrd=initrd, disk=disk,
                                      kernel_args=kernel_args, firmware=firmware)
    if json:
        return output.emit_json(image)
    output.print_line(f"image '{image.name}' imported ({image.size / 2**20:.1f} MiB)")
