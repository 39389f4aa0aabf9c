"""Build virtpool's default guest image from Debian packages.

The image is a direct-boot pair for QEMU's ``microvm`` machine: an uncompressed ELF
``vmlinux`` (QEMU boots it through its PVH entry, which is the fastest path) and an
initramfs holding busybox, the virtio and overlay modules, ``qemu-ga`` and e2fsprogs'
``mke2fs``/``resize2fs`` with their libraries, and ``init.sh`` as ``/init`` (which keeps the
guest's root on its disk: see there). Everything comes from ``apt-get download``; nothing is installed on
the host.

The build happens in a hidden directory next to the final one and is renamed into place only
when the manifest has been written, so a crash never leaves a half image under the real name.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import importlib.resources
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from virtpool.model.errors import OperationFailed
from virtpool.node.images.manifest import (
    Manifest,
    file_entry,
    read_manifest,
    sha256_file,
    write_manifest,
)

Progress = Callable[[str, float], None]

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
AGENT_PACKAGE = "qemu-guest-agent"
E2FSPROGS_PACKAGE = "e2fsprogs"  # formats and grows the guest's root disk
# (package, path inside it): the dynamically linked programs the guest needs.
GUEST_PROGRAMS = (
    (AGENT_PACKAGE, "usr/sbin/qemu-ga"),
    (E2FSPROGS_PACKAGE, "sbin/mke2fs"),
    (E2FSPROGS_PACKAGE, "sbin/resize2fs"),
)

KERNEL_FILE = "vmlinux"
INITRD_FILE = "initramfs.cpio.gz"

# Load order matters: insmod does not resolve dependencies (see QEMU-NOTES.md). overlay
# stacks the guest's root on its disk.
GUEST_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
    "virtio_balloon",
    "overlay",
)

LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
ELF_MAGIC = b"\x7fELF"

_APT_HINT = "run 'apt-get update' (or scripts/install-system-packages.sh) and try again"
_TOOLS_HINT = "run scripts/install-system-packages.sh (it installs lz4, cpio and qemu-utils)"


# --------------------------------------------------------------------------------------
# Pure helpers (unit-tested without touching the system)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelPayload:
    """Where the compressed kernel sits inside a bzImage."""

    offset: int
    length: int | None = None  # None when found by scanning rather than from the header
    uncompressed_size: int | None = None  # the size the kernel build appended, if known


def find_lz4_payload(bzimage: bytes) -> KernelPayload:
    """Locate the LZ4 legacy-frame payload inside a bzImage.

    The boot-protocol header (``HdrS``, version >= 2.08) says exactly where the payload is;
    the magic can occur more than once in the image, so the header is preferred and a scan
    for the first magic is only the fallback for images without a usable header.

    Raises ``ValueError`` if there is no LZ4 payload.
    """
    if len(bzimage) >= 0x250 and bzimage[0x202:0x206] == b"HdrS":
        (protocol,) = struct.unpack_from("<H", bzimage, 0x206)
        if protocol >= 0x208:
            setup_sects = bzimage[0x1F1] or 4  # 0 means 4, for historical reasons
            payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
            start = (setup_sects + 1) * 512 + payload_offset
            end = start + payload_length
            if (
                payload_length > 8
                and end <= len(bzimage)
                and bzimage[start : start + 4] == LZ4_LEGACY_MAGIC
            ):
                # The kernel build appends the decompressed size as a little-endian u32.
                (size,) = struct.unpack_from("<I", bzimage, end - 4)
                return KernelPayload(start, payload_length, size)
    offset = bzimage.find(LZ4_LEGACY_MAGIC)
    if offset < 0:
        raise ValueError("no LZ4 legacy-frame payload (magic 02 21 4c 18) in the kernel image")
    return KernelPayload(offset)


def elf_required_size(head: bytes) -> int:
    """How long a 64-bit little-endian ELF file must be, judging from its first bytes.

    ``head`` must contain the ELF header and the program header table (the first 64 KiB is
    plenty for a kernel). The answer covers every segment's file contents and the section
    header table, so a file at least this long was not cut short.

    Raises ``ValueError`` if ``head`` is not the start of such an ELF file.
    """
    if len(head) < 64 or head[:4] != ELF_MAGIC:
        raise ValueError("not an ELF file")
    if head[4] != 2 or head[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    phoff, shoff = struct.unpack_from("<QQ", head, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 0x36)
    needed = max(64, phoff + phentsize * phnum, shoff + shentsize * shnum)
    if phoff + phentsize * phnum > len(head):
        raise ValueError("ELF program headers lie beyond the bytes given")
    for index in range(phnum):
        base = phoff + index * phentsize
        p_offset = struct.unpack_from("<Q", head, base + 0x08)[0]
        p_filesz = struct.unpack_from("<Q", head, base + 0x20)[0]
        if p_filesz:
            needed = max(needed, p_offset + p_filesz)
    return needed


def parse_kernel_dependency(depends_output: str) -> str:
    """Pick the concrete kernel package from ``apt-cache depends linux-image-cloud-amd64``.

    When several versions are listed, the highest ABI wins (compared numerically).
    Raises ``ValueError`` if none is listed.
    """
    found = re.findall(
        r"^\s*\|?Depends:\s*(linux-image-\d[\w.+~-]*-cloud-amd64)\s*$",
        depends_output,
        re.MULTILINE,
    )
    if not found:
        raise ValueError("no linux-image-<version>-cloud-amd64 dependency listed")

    def key(package: str) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", package)]

    return max(found, key=key)


def parse_apt_show(text: str) -> dict[str, dict[str, str]]:
    """Fields of each package's first stanza in ``apt-cache show`` output, by package name.

    Continuation lines (long descriptions) are dropped.
    """
    packages: dict[str, dict[str, str]] = {}
    fields: dict[str, str] = {}

    def flush() -> None:
        if "Package" in fields:
            packages.setdefault(fields["Package"], dict(fields))
        fields.clear()

    for line in text.splitlines():
        if not line.strip():
            flush()
        elif line[0] not in " \t":
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
    flush()
    return packages


def parse_ldd(output: str) -> list[str]:
    """Absolute paths of the libraries (and ELF interpreter) named by ``ldd`` output.

    The vDSO has no file and is skipped. Raises ``ValueError`` listing any library ldd could
    not find.
    """
    paths: list[str] = []
    missing: list[str] = []
    for raw in output.splitlines():
        line = raw.strip()
        if not line or line.startswith(("linux-vdso", "linux-gate")):
            continue
        if "=>" in line:
            name, _, rest = line.partition("=>")
            target = rest.strip().split(" (")[0].strip()
            if target == "not found" or not target:
                missing.append(name.strip())
            elif target.startswith("/"):
                paths.append(target)
        else:
            target = line.split(" (")[0].strip()
            if target.startswith("/"):
                paths.append(target)  # the interpreter, e.g. /lib64/ld-linux-x86-64.so.2
    if missing:
        raise ValueError("libraries not found: " + ", ".join(missing))
    return list(dict.fromkeys(paths))


def parse_busybox_list(output: str) -> list[str]:
    """Relative applet paths from ``busybox --list-full`` (e.g. ``bin/ls``), safe to join."""
    applets = []
    for line in output.splitlines():
        path = line.strip().lstrip("/")
        if not path or ".." in path.split("/"):
            continue
        applets.append(path)
    return applets


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------


def build_default_image(
    images_dir: Path,
    name: str = "default",
    *,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
) -> tuple[Manifest, bool]:
    """Build (or reuse) the default guest image ``images_dir/name``.

    Returns the manifest and whether anything was built. An existing image whose files still
    match their checksums is returned untouched. Downloaded packages are kept in
    ``cache_dir`` (default ``images_dir/.debs``) for the next build.

    Raises ``OperationFailed`` with a hint when a tool, apt's package lists or the mirror is
    missing; no partial image is left behind.
    """
    images_dir = Path(images_dir)
    cache = Path(cache_dir) if cache_dir is not None else images_dir / ".debs"

    def populate(build_dir: Path, report: Progress) -> Manifest:
        cache.mkdir(parents=True, exist_ok=True)
        return _populate(build_dir, name, cache, report)

    return build_cached(images_dir, name, populate, current=_valid_manifest, progress=progress)


def build_cached(
    images_dir: Path,
    name: str,
    populate: Callable[[Path, Progress], Manifest],
    *,
    current: Callable[[Path], Manifest | None],
    progress: Progress | None = None,
) -> tuple[Manifest, bool]:
    """Build image ``images_dir/name`` with ``populate`` unless ``current`` finds it up to date.

    ``populate`` fills a hidden build directory (files and manifest); it is renamed into place
    only when it returns, so a failed or interrupted build never leaves half an image. Returns
    the manifest and whether anything was built.
    """
    report: Progress = progress or (lambda _step, _fraction: None)
    if not name or "/" in name or name.startswith("."):
        raise OperationFailed(
            f"invalid image name '{name}'",
            hint="use a plain name without '/' that does not start with '.'",
        )
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    final = images_dir / name

    report("checking for an existing image", 0.0)
    existing = current(final)
    if existing is not None:
        report("image is up to date", 1.0)
        return existing, False

    # Two builders of the same image would download and pack twice, and the second rename
    # would race the first; serialise them and let the loser find the finished image.
    with _build_lock(images_dir, name):
        existing = current(final)
        if existing is not None:
            report("image is up to date", 1.0)
            return existing, False
        # Under the lock no other build of this name runs, so any leftover is from a crash.
        # Match mkdtemp's exact suffix so that image "a" never sweeps a build of image "a-b".
        leftover = re.compile(re.escape(f".build-{name}-") + r"[a-z0-9_]{8}")
        for stale in images_dir.iterdir():
            if stale.is_dir() and leftover.fullmatch(stale.name):
                shutil.rmtree(stale, ignore_errors=True)

        build_dir = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=images_dir))
        try:
            manifest = populate(build_dir, report)
            _install(build_dir, final)
        except BaseException:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise
    report("done", 1.0)
    return manifest, True


# --------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------


def _valid_manifest(image_dir: Path) -> Manifest | None:
    """The image's manifest if every file it names is present and unchanged, and it was
    built from the current init script."""
    manifest = intact_manifest(image_dir)
    if manifest is None:
        return None
    # An image built from an older init script is stale: a virtpool upgrade that changed how
    # guests boot must reach the default image, not only new ones.
    current = _sha256_bytes(_init_script())
    if manifest.source.get("init_sha256", current) != current:
        return None
    return manifest


def intact_manifest(image_dir: Path) -> Manifest | None:
    """The image's manifest if every file it names is present and unchanged."""
    try:
        manifest = read_manifest(image_dir)
    except (ValueError, KeyError, TypeError):
        return None  # unreadable manifest: treat as no image and rebuild
    if manifest is None:
        return None
    for entry in manifest.files():
        path = image_dir / entry.path
        try:
            if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
                return None
        except OSError:
            return None
    return manifest


def _init_script() -> bytes:
    return importlib.resources.files("virtpool.node.images").joinpath("init.sh").read_bytes()


@contextmanager
def _build_lock(images_dir: Path, name: str) -> Iterator[None]:
    with open(images_dir / f".build-{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _install(build_dir: Path, final: Path) -> None:
    """Move the finished build to its real name, replacing a broken image if there is one."""
    build_dir.chmod(0o755)  # mkdtemp made it private; QEMU may run as another user
    if not final.exists():
        os.replace(build_dir, final)
        return
    # rename() cannot replace a non-empty directory, so move the old one aside first.
    old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
    os.replace(final, old / final.name)
    os.replace(build_dir, final)
    shutil.rmtree(old, ignore_errors=True)


def _populate(build_dir: Path, name: str, cache: Path, report: Progress) -> Manifest:
    """Fill ``build_dir`` with the image files and the manifest; return the manifest."""
    work = build_dir / "work"
    work.mkdir()

    report("resolving packages", 0.02)
    _check_architecture()
    kernel_package = _resolve_kernel_package()
    packages = [kernel_package, BUSYBOX_PACKAGE, AGENT_PACKAGE, E2FSPROGS_PACKAGE]
    candidates = _candidates(packages)
    versions = {package: candidates[package]["Version"] for package in packages}
    debs: dict[str, Path] = {}
    for index, package in enumerate(packages):
        report(f"downloading {package} {versions[package]}", 0.05 + 0.3 * index / len(packages))
        debs[package] = _fetch_deb(package, candidates[package], cache)

    report("extracting kernel", 0.38)
    kernel_root = _extract(debs[kernel_package], work / "kernel")
    kernel_release = _decompress_kernel(kernel_root, build_dir / KERNEL_FILE, work)

    root = work / "root"
    report("collecting busybox", 0.55)
    _add_busybox(_extract(debs[BUSYBOX_PACKAGE], work / "busybox"), root)

    report("collecting kernel modules", 0.62)
    _add_modules(kernel_root, kernel_release, root)

    report("collecting guest agent and disk tools", 0.7)
    unpacked = {
        package: _extract(debs[package], work / package)
        for package in dict.fromkeys(package for package, _ in GUEST_PROGRAMS)
    }
    for package, relative in GUEST_PROGRAMS:
        _add_program(unpacked[package], relative, package, root)

    init_bytes = _init_script()
    (root / "init").write_bytes(init_bytes)
    (root / "init").chmod(0o755)

    report("packing initramfs", 0.8)
    _pack_initramfs(root, build_dir / INITRD_FILE)
    shutil.rmtree(work)

    report("checksumming", 0.92)
    source = {package: versions[package] for package in packages}
    source["kernel_release"] = kernel_release
    source["init_sha256"] = _sha256_bytes(init_bytes)
    manifest = Manifest(
        name=name,
        kernel=file_entry(build_dir, KERNEL_FILE),
        initrd=file_entry(build_dir, INITRD_FILE),
        kernel_args="",
        source=source,
    )
    write_manifest(build_dir, manifest)
    return manifest


def _check_architecture() -> None:
    arch = run_tool(["dpkg", "--print-architecture"], what="ask dpkg for the host architecture")
    if arch.stdout.strip() != "amd64":
        raise OperationFailed(
            f"the default image can only be built on amd64 hosts (this one is "
            f"{arch.stdout.strip()})",
            hint="build it on an amd64 Debian host and copy images/<name> over",
        )


def _resolve_kernel_package() -> str:
    result = run_tool(
        ["apt-cache", "depends", KERNEL_META_PACKAGE],
        what=f"look up {KERNEL_META_PACKAGE}",
        hint=_APT_HINT,
        check=False,
    )
    if result.returncode != 0:
        raise OperationFailed(
            f"apt does not know {KERNEL_META_PACKAGE}: its package lists are missing",
            hint=_APT_HINT,
        )
    try:
        return parse_kernel_dependency(result.stdout)
    except ValueError:
        raise OperationFailed(
            f"could not find the kernel package that {KERNEL_META_PACKAGE} depends on",
            hint=_APT_HINT,
        ) from None


def _candidates(packages: list[str]) -> dict[str, dict[str, str]]:
    """apt's candidate stanza for each package (one apt-cache call: each takes ~1 s)."""
    shown = run_tool(
        ["apt-cache", "show", "--no-all-versions", *packages],
        what="look up " + ", ".join(packages),
        check=False,
    )
    found = parse_apt_show(shown.stdout)
    missing = [p for p in packages if not found.get(p, {}).get("Version")]
    if missing:
        raise OperationFailed(
            f"apt does not know {', '.join(missing)}: its package lists are missing or stale",
            hint=_APT_HINT,
        )
    return found


def _fetch_deb(package: str, fields: dict[str, str], cache: Path) -> Path:
    """The candidate ``.deb`` of ``package`` in ``cache`` (downloaded unless already there)."""
    version = fields["Version"]
    wanted = fields.get("SHA256")

    def cached() -> Path | None:
        # apt-get download names files <package>_<version with ':' as %3a>_<arch>.deb.
        for candidate in sorted(cache.glob(f"{package}_*.deb")):
            if wanted is not None:
                if sha256_file(candidate) == wanted:
                    return candidate
            elif _deb_version(candidate) == version:
                return candidate
        return None

    found = cached()
    if found is None:
        run_tool(
            ["apt-get", "download", f"{package}={version}"],
            cwd=cache,
            what=f"download {package} {version}",
            hint="check that this host can reach the Debian mirror; if apt reports 404, the "
            "package lists are stale: " + _APT_HINT,
        )
        found = cached()
        if found is None:
            raise OperationFailed(
                f"apt-get download of {package} {version} left no matching file in {cache}",
                hint=f"delete {cache} and try again; if it persists, " + _APT_HINT,
            )
    return found


def _deb_version(deb: Path) -> str:
    return run_tool(
        ["dpkg-deb", "--field", str(deb), "Version"], what=f"read the version of {deb}"
    ).stdout.strip()


def _extract(deb: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    run_tool(["dpkg", "-x", str(deb), str(target)], what=f"unpack {deb.name}")
    return target


def _decompress_kernel(kernel_root: Path, vmlinux: Path, work: Path) -> str:
    """Turn the package's bzImage into an ELF vmlinux; return the kernel release."""
    images = sorted((kernel_root / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise OperationFailed(
            f"expected one boot/vmlinuz-* in the kernel package, found {len(images)}",
            hint="the Debian kernel packaging changed; report this as a virtpool bug",
        )
    release = images[0].name.removeprefix("vmlinuz-")
    bzimage = images[0].read_bytes()
    try:
        payload = find_lz4_payload(bzimage)
    except ValueError as exc:
        raise OperationFailed(
            f"{images[0].name}: {exc}",
            hint="the kernel is no longer LZ4-compressed; virtpool's builder needs updating",
        ) from None
    end = payload.offset + payload.length if payload.length else len(bzimage)
    compressed = work / "vmlinux.lz4"
    compressed.write_bytes(bzimage[payload.offset : end])
    del bzimage

    with vmlinux.open("wb") as out:
        result = run_tool(
            ["lz4", "-dc", str(compressed)],
            what="decompress the kernel",
            hint=_TOOLS_HINT,
            stdout=out,
            check=False,
        )
    compressed.unlink()
    # The legacy frame has no end marker: lz4 reads the appended size (or whatever follows)
    # as a block, complains and exits 1 after writing everything. Judge the output instead.
    problem = _vmlinux_problem(vmlinux, payload)
    if problem:
        raise OperationFailed(
            f"decompressing the kernel failed: {problem}"
            + (f" (lz4: {result.stderr.strip()[-300:]})" if result.stderr.strip() else ""),
            hint="check that lz4 is installed and working: " + _TOOLS_HINT,
        )
    return release


def _vmlinux_problem(vmlinux: Path, payload: KernelPayload) -> str | None:
    size = vmlinux.stat().st_size
    with vmlinux.open("rb") as handle:
        head = handle.read(65536)
    try:
        needed = elf_required_size(head)
    except ValueError as exc:
        return f"the output is {exc}"
    if size < needed:
        return f"the ELF is truncated ({size} bytes, needs {needed})"
    if payload.uncompressed_size is not None and size != payload.uncompressed_size:
        return f"got {size} bytes, the kernel image says {payload.uncompressed_size}"
    return None


def _add_busybox(busybox_root: Path, root: Path) -> None:
    binary = busybox_root / "bin" / "busybox"
    if not binary.is_file():
        raise OperationFailed(
            "the busybox-static package has no bin/busybox",
            hint="the Debian packaging changed; report this as a virtpool bug",
        )
    for directory in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "lib",
        "lib64",
        "etc",
        "root",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "mnt",
    ):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")
    shutil.copy2(binary, root / "bin" / "busybox")
    # Linking the applets now saves a `busybox --install` at every (emulated, slow) boot.
    applets = run_tool([str(binary), "--list-full"], what="list busybox applets").stdout
    for relative in parse_busybox_list(applets):
        link = root / relative
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


def _add_modules(kernel_root: Path, release: str, root: Path) -> None:
    tree = kernel_root / "lib" / "modules" / release
    by_name = {path.name: path for path in tree.rglob("*.ko")}
    target = root / "lib" / "modules" / release
    target.mkdir(parents=True)
    missing = []
    for module in GUEST_MODULES:
        source = by_name.get(f"{module}.ko")
        if source is None:
            missing.append(module)
            continue
        shutil.copyfile(source, target / source.name)
    if missing:
        raise OperationFailed(
            f"kernel {release} has no uncompressed module for: {', '.join(missing)}",
            hint="the Debian kernel packaging changed (compressed or built-in modules); "
            "virtpool's builder needs updating",
        )


def _add_program(package_root: Path, relative: str, package: str, root: Path) -> None:
    """Copy one program out of its unpacked package, with the host libraries ldd names."""
    binary = package_root / relative
    if not binary.is_file():
        raise OperationFailed(
            f"the {package} package has no {relative}",
            hint="the Debian packaging changed; report this as a virtpool bug",
        )
    destination = root / relative
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Busybox may already have an applet link of that name, pointing at /bin/busybox: copying
    # through it would overwrite the *host's* busybox. Replace the link, never write through.
    destination.unlink(missing_ok=True)
    shutil.copy2(binary, destination)
    ldd = run_tool(
        ["ldd", str(binary)],
        what=f"list the libraries {binary.name} needs",
        hint="install libc-bin (it provides ldd)",
    )
    try:
        libraries = parse_ldd(ldd.stdout)
    except ValueError as exc:
        raise OperationFailed(
            f"{binary.name} needs {exc}",
            hint=f"install them on this host: apt-get install {package}",
        ) from None
    for library in libraries:
        # Same path as on the host, content of the real file (sonames are often symlinks).
        target = root / library.lstrip("/")
        if os.path.lexists(target):
            continue  # another program needs it too
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(os.path.realpath(library), target)
        target.chmod(0o755)


def _pack_initramfs(root: Path, output: Path) -> None:
    """Write ``root`` as a gzip-compressed newc cpio archive."""
    names = ["."]
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        relative = Path(directory).relative_to(root)
        for entry in sorted(subdirs + files):
            names.append(str(relative / entry) if str(relative) != "." else entry)
    listing = "\0".join(names).encode() + b"\0"
    archive = output.with_suffix(".cpio")
    with archive.open("wb") as out:
        # -R 0:0 so that files are root's inside the guest whoever builds the image.
        run_tool(
            ["cpio", "--quiet", "-o", "-H", "newc", "--null", "-R", "0:0"],
            cwd=root,
            what="pack the initramfs",
            hint=_TOOLS_HINT,
            input=listing,
            stdout=out,
            text=False,
        )
    # mtime=0: no build time in the gzip header (the cpio still records file times).
    with (
        archive.open("rb") as source,
        output.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz,
    ):
        shutil.copyfileobj(source, gz, 1 << 20)
    archive.unlink()


# --------------------------------------------------------------------------------------
# Subprocess plumbing
# --------------------------------------------------------------------------------------


def run_tool(
    argv: list[str],
    *,
    what: str,
    hint: str | None = None,
    cwd: Path | None = None,
    check: bool = True,
    input: bytes | None = None,
    stdout: object = subprocess.PIPE,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``argv``; turn a missing tool or (if ``check``) a failure into OperationFailed."""
    env = dict(os.environ, LC_ALL="C")  # parse English output whatever the user's locale
    try:
        result = subprocess.run(
            argv,
            check=False,
            cwd=cwd,
            input=input,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
            text=text,
        )
    except FileNotFoundError:
        raise OperationFailed(
            f"cannot {what}: the program '{argv[0]}' is not installed",
            hint=hint or _TOOLS_HINT,
        ) from None
    if check and result.returncode != 0:
        stderr = (
            result.stderr
            if isinstance(result.stderr, str)
            else result.stderr.decode(errors="replace")
        )
        detail = stderr.strip()[-500:] or f"exit status {result.returncode}"
        raise OperationFailed(f"cannot {what}: {detail}", hint=hint)
    return result


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
