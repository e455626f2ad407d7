#!/bin/bash
# The test VM's runner (started by scripts/vmtest.py's initramfs on the overlay root). As PID 1 it mounts the
# basics and starts udevd itself; in the systemd lane systemd is PID 1 and runs it as bsud-vmtest.service
# (tests/vm/systemd/), which has done both. Then: the storage modules, pytest's vm lane, its exit code on the
# console, power off. In a pair of guests (scripts/vmtest.py's Pair; bsud.node= on the kernel command line), the
# network card gets the node's address and DRBD's module is loaded; node a runs pytest, node b the peer agent
# (tests/vm/peer_agent.py) until a tells it to power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ "$$" -eq 1 ]; then
    mount -t proc proc /proc
    mount -t sysfs sys /sys
    mountpoint -q /dev || mount -t devtmpfs dev /dev
    mkdir -p /dev/pts /dev/shm
    [ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
    mount -t devpts devpts /dev/pts
    mount -t tmpfs tmpfs /dev/shm
    mount -t tmpfs tmpfs /run
    export BSUD_VM_INIT=script
else
    export BSUD_VM_INIT=systemd
fi
# The checkout may live under the host's /tmp (CI clones): keep /tmp visible and give tests their own
# tmpfs as TMPDIR, outside /run (bsud refuses mount paths under system trees such as /run).
mkdir -p /run/vmshare /run/lock /var/tmp/bsud-vm
mount -t tmpfs tmpfs /var/tmp/bsud-vm
export TMPDIR=/var/tmp/bsud-vm
mount -t 9p -o trans=virtio,version=9p2000.L vmshare /run/vmshare
for m in dm_mod dm_mirror btrfs ext4 virtio_blk virtio_scsi sd_mod nvme loop virtio_console; do modprobe "$m"; done
ip link set lo up
if [ "$$" -eq 1 ]; then
    /lib/systemd/systemd-udevd --daemon
    udevadm trigger --action=add
fi
udevadm settle --timeout=30
cmdline_value() { sed -n "s/.*bsud\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
node=$(cmdline_value node)
if [ -n "$node" ]; then
    modprobe virtio_net
    modprobe drbd
    hostname "vm-$node"   # DRBD's resource files name the nodes: on vm-a { … } on vm-b { … }
    mac=$(cmdline_value mac)
    udevadm settle --timeout=30
    nic=
    for dev in /sys/class/net/*; do
        [ "$(cat "$dev/address")" = "$mac" ] && nic=${dev##*/}
    done
    if [ -n "$nic" ]; then
        ip addr add "$(cmdline_value ip)" dev "$nic"
        ip link set "$nic" up
    else
        echo "vm: no network card with MAC $mac"
    fi
    export BSUD_VM_NODE=$node BSUD_VM_IP=$(cmdline_value ip | cut -d/ -f1) BSUD_VM_PEER=$(cmdline_value peer)
fi

repo=$(sed -n 's/.*bsud.repo=\([^ ]*\).*/\1/p' /proc/cmdline)
cd "$repo" || { echo "BSUD-VM-EXIT=3"; echo o > /proc/sysrq-trigger; }
# The host hands the checkout's .venv over as a read-only ext4 disk (scripts/vmtest.py, build_venv_image): Python
# imports and botocore's model lookups from it instead of over 9p, ~7 s less per bsud start under TCG.
venv_disk=/dev/disk/by-id/virtio-bsud-vm-venv
if [ -e "$venv_disk" ]; then
    mount -t ext4 -o ro,noload "$venv_disk" "$repo/.venv" || echo "vm: could not mount $venv_disk; .venv stays on 9p"
fi
mapfile -t args < <(/usr/bin/python3 -c 'import json,sys; print("\n".join(json.load(open("/run/vmshare/args.json"))))' 2>/dev/null)
[ "${#args[@]}" -eq 0 ] || [ -z "${args[0]}" ] && args=(tests/vm)
export BSUD_IN_VM=1 HOME=/root PYTHONDONTWRITEBYTECODE=1 TERM=dumb COLUMNS=300  # COLUMNS: short summary lines not cut at 80
if [ "$node" = b ]; then
    echo "vm: kernel $(uname -r), node b ($BSUD_VM_IP on $nic), starting the peer agent"
    .venv/bin/python tests/vm/peer_agent.py "$BSUD_VM_IP"
    rc=$?
else
    echo "vm: kernel $(uname -r), init: $BSUD_VM_INIT, udevd running${node:+, node $node ($BSUD_VM_IP on $nic)}," \
         "starting pytest ${args[*]}"
    .venv/bin/python -m pytest -p no:cacheprovider -m vm --durations=25 "${args[@]}"   # durations: to weigh WEIGHTS
    rc=$?
fi
sync
echo "BSUD-VM-EXIT=$rc"
echo o > /proc/sysrq-trigger
sleep 10 2>/dev/null   # until the power-off lands
