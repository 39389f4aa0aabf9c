#!/bin/sh
# /init of virtpool's default image: PID 1, run by busybox sh from the initramfs.
#
# PID 1 must never exit (the kernel panics when it does), so there is no `set -e` here:
# a failing step is reported on the console and boot carries on.
#
# Two stages. Stage 1 (in the initramfs) loads the drivers and puts the root filesystem on
# the VM's disk: an overlay whose lower layer is the initramfs (the image's system files,
# read-only) and whose upper layer lives on /dev/vda, formatted ext4 on first boot when the
# disk is blank. Whatever the guest writes therefore survives a stop, while an updated
# image still reaches the system files. Stage 2 (`/init stage2`, chrooted into that root)
# brings up the rest.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
export TERM=linux

say() { echo "virtpool: $*"; }

# DISK_MOUNT is where the disk stays visible
# inside the guest (fsfreeze, sync and fstrim reach it there).
DISK_MOUNT=/.disk
NEW_ROOT=/.root
LOWER=/.lower

# A disk is blank when its first 64 KiB are zeros: never format anything that holds data.
disk_is_blank() {
    [ "$(head -c 65536 "$1" | tr -d '\000' | head -c 1 | wc -c)" -eq 0 ]
}

# Mount the disk at DISK_MOUNT (formatting it first if blank) and stack the root on it.
root_on_disk() {
    disk=/dev/vda
    [ -b "$disk" ] || return 1
    mkdir -p "$DISK_MOUNT" "$NEW_ROOT" "$LOWER"
    if ! mount -t ext4 -o noatime "$disk" "$DISK_MOUNT" 2>/dev/null; then
        disk_is_blank "$disk" || { say "$disk holds something other than ext4: root stays in RAM"; return 1; }
        # Lazy init: a fresh qcow2 reads as zeros, so inode tables and journal need no writing.
        # Full paths: this busybox runs its own (ext2-only) applets before anything on PATH.
        /sbin/mke2fs -q -t ext4 -L virtpool-root -E lazy_itable_init=1,lazy_journal_init=1 "$disk" \
            || { say "formatting $disk failed"; return 1; }
        mount -t ext4 -o noatime "$disk" "$DISK_MOUNT" || return 1
    fi
    # A disk grown while stopped (vm resize --disk-size) is put to use.
    /sbin/resize2fs "$disk" >/dev/null 2>&1 || say "resize2fs $disk failed"
    mkdir -p "$DISK_MOUNT/upper" "$DISK_MOUNT/work"
    mount --bind / "$LOWER" || return 1
    mount -t overlay overlay \
        -o "lowerdir=$LOWER,upperdir=$DISK_MOUNT/upper,workdir=$DISK_MOUNT/work" "$NEW_ROOT" \
        || { umount "$LOWER"; return 1; }
}

if [ "$1" != stage2 ]; then
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    # The kernel may have started us without a console if it found no /dev/console to open.
    exec </dev/console >/dev/console 2>&1

    # insmod does not follow dependencies, hence this fixed order (see QEMU-NOTES.md).
    kver=$(uname -r)
    # virtio_pci: the same guest also boots on q35 (firmware boot), where devices are on PCI.
    for module in virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev \
        virtio_pci virtio_blk failover net_failover \
        virtio_net virtio_console virtio_balloon overlay; do
        ko=/lib/modules/$kver/$module.ko
        if [ -f "$ko" ]; then
            insmod "$ko" || say "insmod $module failed"
        else
            say "module $module missing"
        fi
    done

    if root_on_disk; then
        for fs in /proc /sys /dev; do
            mkdir -p "$NEW_ROOT$fs" && mount --move "$fs" "$NEW_ROOT$fs"
        done
        mkdir -p "$NEW_ROOT$DISK_MOUNT" && mount --move "$DISK_MOUNT" "$NEW_ROOT$DISK_MOUNT"
        # What switch_root does, minus deleting the initramfs: it is the overlay's lower layer.
        # Should the move fail, the chroot alone still puts the guest on its disk.
        cd "$NEW_ROOT" || exec chroot "$NEW_ROOT" /init stage2
        mount --move . / || say "could not move the root onto /"
        exec chroot . /init stage2
    fi
fi

mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run

hostname=virtpool  # unless the kernel command line names it
for arg in $(cat /proc/cmdline); do
    case $arg in
        virtpool.hostname=*) hostname=${arg#virtpool.hostname=} ;;
    esac
done
if [ -n "$hostname" ]; then
    hostname "$hostname"
    echo "$hostname" >/etc/hostname
fi
printf '127.0.0.1\tlocalhost %s\n' "$hostname" >/etc/hosts
echo 'root:x:0:0:root:/root:/bin/sh' >/etc/passwd
echo 'root:x:0:' >/etc/group
echo 'export PATH=/usr/sbin:/usr/bin:/sbin:/bin PS1="\h:\w# "' >/etc/profile

ip link set lo up
if grep -q 'virtpool.net=dhcp' /proc/cmdline; then
    # NICs on virtpool networks: each takes the address the platform's IPAM gave its MAC.
    cat >/etc/udhcpc.sh <<'EOF'
#!/bin/sh
case $1 in
    bound|renew)
        ip addr flush dev "$interface"
        [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
        ip addr add "$ip/$mask" dev "$interface"
        [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
        ;;
esac
exit 0
EOF
    chmod 755 /etc/udhcpc.sh
    for nic in /sys/class/net/eth*; do
        nic=${nic##*/}
        ip link set "$nic" up
        udhcpc -i "$nic" -s /etc/udhcpc.sh -O mtu -n -q -t 20 -T 1 -A 1 >/dev/null 2>&1 \
            || say "no DHCP lease on $nic"
    done
# The default network (passt) hands out fixed addresses, so no DHCP client is needed.
elif [ -e /sys/class/net/eth0 ]; then
    ip addr add 10.0.2.15/24 dev eth0
    ip link set eth0 up
    ip route add default via 10.0.2.2 dev eth0 || say "no default route"
    echo "nameserver 10.0.2.3" >/etc/resolv.conf
fi

# qemu-ga's guest-shutdown runs "/sbin/shutdown -h -P +0 MESSAGE" (-H to halt, -r to
# reboot). Nothing in this RAM-only guest needs stopping cleanly, so act at once.
cat >/sbin/shutdown <<'EOF'
#!/bin/sh
action=poweroff
for arg in "$@"; do
    case $arg in
        -r) action=reboot ;;
        -H) action=halt ;;
    esac
done
sync
exec $action -f
EOF
chmod 755 /sbin/shutdown

# Without udev there is no /dev/virtio-ports/<name> link: find the agent's port by the name
# QEMU gave it. Port names arrive from the host asynchronously after the driver loads.
agent_port() {
    for port in /sys/class/virtio-ports/*; do
        [ -r "$port/name" ] || continue
        if [ "$(cat "$port/name")" = org.qemu.guest_agent.0 ]; then
            echo "/dev/${port##*/}"
            return 0
        fi
    done
    return 1
}
port=
if ls /sys/bus/virtio/drivers/virtio_console/ 2>/dev/null | grep -q '^virtio'; then
    tries=0
    while [ $tries -lt 50 ]; do
        port=$(agent_port) && break
        port=
        tries=$((tries + 1))
        usleep 20000
    done
fi
[ -n "$port" ] || port=/dev/vport0p1
if [ -e "$port" ]; then
    # Respawned so that a crashed agent does not leave the VM unmanageable.
    (
        while :; do
            qemu-ga -m virtio-serial -p "$port" -t /run
            say "qemu-ga exited with status $?, restarting"
            sleep 1
        done
    ) </dev/null >>/run/qemu-ga.log 2>&1 &
else
    say "no guest agent port found"
fi

echo "virtpool: ready"  # the boot tests and logs look for this exact line

# An interactive shell on the serial console, forever. setsid makes the shell a session
# leader, so opening the tty gives it a controlling terminal and job control works.
while :; do
    if [ -c /dev/ttyS0 ]; then
        setsid sh -c 'exec sh -l </dev/ttyS0 >/dev/ttyS0 2>&1'
    fi
    sleep 1
done
