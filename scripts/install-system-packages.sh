#!/usr/bin/env bash
# Installs the Debian packages virtpool needs on this host: QEMU and qemu-img, the tools that
# build the default guest image, and the libraries the guest agent is copied from.
# Idempotent: packages already present are not fetched again.
# Usage: install-system-packages.sh [--test]
set -euo pipefail

PACKAGES=(
  qemu-system-x86   # the hypervisor (microvm and q35 machine types, SeaBIOS)
  ovmf              # UEFI firmware for disks imported with --firmware uefi
  qemu-utils        # qemu-img: disk creation and inspection
  qemu-guest-agent  # its shared libraries are resolved with ldd when the image is built
  e2fsprogs         # likewise for mke2fs and resize2fs, which the guest formats its root disk with
                    # (and mke2fs -d writes the debian-12 image's root filesystem)
  mmdebstrap        # installs the debian-12 image's root filesystem from this host's apt mirror
  grub-pc-bin       # GRUB's BIOS boot sector and core image for the debian-12 disk
  busybox-static    # the guest's userland
  cpio              # packs the initramfs
  lz4               # unpacks the kernel's LZ4 payload into an ELF vmlinux
  iproute2
  util-linux        # setpriv: QEMU starts as its VM user with an empty capability bounding set
  passt             # the default network: user-mode NAT that does not expose the host
  nftables          # the guard that keeps guests off the host, NAT, security groups
  dnsmasq-base      # DHCP (static leases only) on virtpool networks
  python3-venv      # the project's virtualenv
)

# --test: what the test suite needs beyond running the platform: a PostgreSQL server that the
# tests start as a throwaway cluster of their own, the headless Chromium the dashboard tests
# drive through Playwright, the Prometheus server that scrapes /metrics in a test, and ping,
# with which tests/cluster checks what its network namespaces reach.
if [ "${1:-}" = "--test" ]; then
  PACKAGES+=(postgresql iperf3)  # iperf3: copied into guests by bench/network.py
  # The firmware-boot tests make a bootable disk of their own: a FAT file system with
  # syslinux's BIOS boot sector and its EFI loader.
  PACKAGES+=(syslinux syslinux-efi syslinux-common mtools dosfstools)
  PACKAGES+=(chromium prometheus)
  PACKAGES+=(iputils-ping)  # tests/cluster
  PACKAGES+=(openssh-client)  # ssh-keygen: the key a cloud-init test puts into a guest
  # npm rebuilds the dashboard's bundle in a test (it must match the committed one); a Node.js
  # installed some other way (nodesource, nvm) is used as it is.
  command -v npm >/dev/null 2>&1 || PACKAGES+=(nodejs npm)
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

# The image builder fetches Debian packages with `apt-get download`, which needs package lists.
need_lists=0
apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 || need_lists=1

if [ "${#missing[@]}" -eq 0 ] && [ "$need_lists" -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "virtpool needs these Debian packages: ${missing[*]}" >&2
  echo "Run this script as root (or: sudo $0)." >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
[ "${#missing[@]}" -eq 0 ] && exit 0
# policy-rc.d stops the guest agent's service from being started on the host itself; one the
# administrator already has is left alone.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
# --no-install-recommends keeps a server install small.
apt-get install -y -q --no-install-recommends "${missing[@]}"
