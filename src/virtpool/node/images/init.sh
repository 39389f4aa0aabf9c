#!/bin/sh
# /init of virtpool's default image: PID 1, run by busybox sh from the initramfs.
#
# PID 1 must never exit (the kernel panics when it does), so there is no `set -e` here:
# a failing step is reported on the console and boot carries on.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
export TERM=linux

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
# The kernel may have started us without a console if it found no /dev/console to open.
exec </dev/console >/dev/console 2>&1

say() { echo "virtpool: $*"; }

# insmod does not follow dependencies, hence this fixed order (see QEMU-NOTES.md).
kver=$(uname -r)
for module in virtio_ring virtio virtio_mmio virtio_blk failover net_failover \
    virtio_net virtio_console virtio_balloon; do
    ko=/lib/modules/$kver/$module.ko
    if [ -f "$ko" ]; then
        insmod "$ko" || say "insmod $module failed"
    else
        say "module $module missing"
    fi
done

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

# QEMU user-mode networking hands out fixed addresses, so no DHCP client is needed.
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
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
