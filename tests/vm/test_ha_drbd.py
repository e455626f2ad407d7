"""DRBD between two guests (issue 23's proof infrastructure): each node's backing device is an LV on a disk attached
through moto to its own instance; a resource between them, connected without the initial full sync; btrfs on the
Primary; an online grow as bsud would do it (a volume more per node, vgextend, lvextend, ``drbdadm resize`` on the
Primary, ``btrfs filesystem resize max``); a fail-over to the other node with the data intact.

On the way it records what DRBD 8.4 (Debian 12's kernel) and drbd-utils 9.22 answer, including ``drbdadm resize``
while the peer's backing is still smaller and while the peer is disconnected: lines starting ``drbd-fact:`` (run
with ``-s`` to see them; docs/ha.md, "DRBD 8.4 in the test VM, as measured", quotes them).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

RES, DEVICE, MINOR = "r0", "/dev/drbd0", 0
VG, LV = "drbdvg", "data"
BACKING = f"/dev/{VG}/{LV}"
RESOURCE_FILE = f"""resource {RES} {{
    protocol C;
    device {DEVICE} minor {MINOR};
    disk {BACKING};
    meta-disk internal;
    on vm-a {{ address 10.99.1.1:7789; }}
    on vm-b {{ address 10.99.1.2:7789; }}
}}
"""


def fact(node, argv: list[str], check: bool = False, input: str = "") -> subprocess.CompletedProcess[str]:  # noqa: A002
    """Run ``argv`` on ``node`` and print what it answered, for the record."""
    started = time.monotonic()
    done = node.run(argv, check=False, timeout=300, input=input)
    took = time.monotonic() - started
    print(f"drbd-fact: [{node.name}] $ {shlex.join(argv)}  → rc {done.returncode} ({took:.1f} s)")
    for stream, text in (("out", done.stdout), ("err", done.stderr)):
        for line in text.rstrip().splitlines():
            print(f"drbd-fact: [{node.name}]   {stream}| {line}")
    if check:
        assert done.returncode == 0, f"on {node.name}: {argv} exited {done.returncode}: {done.stderr}"
    return done


def kernel_log(node, lines: int = 15) -> None:
    """DRBD's last kernel messages on ``node``, for the record."""
    drbd_lines = [line for line in node.run(["dmesg"]).stdout.splitlines() if "drbd" in line.lower()]
    for line in drbd_lines[-lines:]:
        print(f"drbd-fact: [{node.name}]   dmesg| {line}")


def wait_kernel(node, text: str, count: int, timeout: float = 30) -> None:
    """Until the kernel log of ``node`` has said ``text`` ``count`` times."""
    deadline = time.monotonic() + timeout
    while node.run(["dmesg"]).stdout.count(text) < count:
        assert time.monotonic() < deadline, f"on {node.name}: the kernel did not say {text!r} ({count}×)"
        time.sleep(0.5)


def udev_fs(node, device: str) -> None:
    """What udev's blkid made of ``device`` (ID_FS_*), for the record."""
    props = node.run(["udevadm", "info", "--query=property", "--name", device]).stdout.splitlines()
    print(f"drbd-fact: [{node.name}] udev {device}: {' '.join(p for p in props if p.startswith('ID_FS_'))}")


def drbd(node, *args: str) -> str:
    return node.run(["drbdadm", *args], timeout=120).stdout.strip()


def wait_for(node, what: list[str], expected: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    got = ""
    while time.monotonic() < deadline:
        got = node.run(["drbdadm", *what, RES], check=False).stdout.strip()
        if got == expected:
            return
        time.sleep(0.5)
    proc = node.run(["cat", "/proc/drbd"], check=False).stdout
    raise AssertionError(f"on {node.name}: drbdadm {' '.join(what)} {RES} is {got!r}, not {expected!r} after "
                         f"{timeout:g} s\n/proc/drbd:\n{proc}")


def sectors(node) -> int:
    return int(node.run(["cat", f"/sys/block/drbd{MINOR}/size"]).stdout)


def lv_bytes(node) -> int:
    return int(node.run(["lvm", "lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size",
                         f"{VG}/{LV}"]).stdout)


def test_drbd_between_two_guests_grows_online_and_fails_over(pair, tmp_path: Path):
    a, b = pair.a, pair.b
    both = (a, b)
    assert b.request({"op": "ping"})["node"] == "vm-b"
    # b reaches the one moto (in a) on a's address, and sees its own instance there
    probe = ("import boto3, sys; print(boto3.client('ec2', region_name='us-east-1', endpoint_url=sys.argv[1], "
             "aws_access_key_id='testing', aws_secret_access_key='testing').describe_instances(InstanceIds="
             "[sys.argv[2]])['Reservations'][0]['Instances'][0]['InstanceId'])")
    assert b.run([sys.executable, "-c", probe, pair.endpoints["b"], pair.instance_ids["b"]],
                 timeout=180).stdout.strip() == pair.instance_ids["b"]
    # a daemon's config for b, written on b: valid there, on b's instance and moto as b reaches it
    h = pair.harness("b", tmp_path / "b", "hb")
    out = b.run([sys.executable, "-m", "bsud", "check-config", "-c", str(h.config_path)], timeout=180).stdout
    assert pair.instance_ids["b"] in out and pair.endpoints["b"] in out, out
    fact(a, ["drbdadm", "--version"])
    fact(a, ["cat", "/proc/drbd"])

    # The backings: an LV per node on a disk attached to that node's instance (routed by the bridge).
    for node in both:
        vol, dev = pair.attach_new(node.name, 1)
        other = b if node is a else a
        assert other.run(["test", "-e", f"/dev/disk/by-id/virtio-{vol[:20]}"], check=False).returncode == 1, \
            f"{vol}, attached to {node.name}'s instance, appeared in {other.name} too"
        node.run(["lvm", "pvcreate", dev])
        node.run(["lvm", "vgcreate", VG, dev])
        node.run(["lvm", "lvcreate", "-n", LV, "-l", "100%FREE", VG])
        node.write(f"/etc/drbd.d/{RES}.res", RESOURCE_FILE)
        attached = pair.cloud(node.name).get_volume(vol)
        assert attached is not None and [t.instance_id for t in attached.attachments] == [pair.instance_ids[node.name]]

    # Metadata, up, connected; no initial full sync (fresh devices: DRBD's documented new-current-uuid).
    for node in both:
        fact(node, ["drbdadm", "create-md", RES], check=True, input="yes\nyes\n")
    fact(a, ["blkid", "-p", BACKING])
    fact(a, ["wipefs", "--no-act", BACKING])
    for node in both:
        fact(node, ["drbdadm", "up", RES], check=True)
    for node in both:
        wait_for(node, ["cstate"], "Connected", 120)
    for node in both:
        fact(node, ["drbdadm", "role", RES])
        fact(node, ["drbdadm", "cstate", RES])
        fact(node, ["drbdadm", "dstate", RES])
    fact(a, ["drbdadm", "sh-dev", RES])
    fact(a, ["drbdadm", "sh-md-dev", RES])
    fact(a, ["drbdadm", "sh-ll-dev", RES])
    fact(a, ["drbdsetup", "status", RES])
    fact(a, ["cat", "/proc/drbd"])
    assert drbd(a, "dstate", RES) == "Inconsistent/Inconsistent"
    fact(a, ["drbdadm", "--", "--clear-bitmap", "new-current-uuid", RES], check=True)
    for node in both:
        wait_for(node, ["dstate"], "UpToDate/UpToDate", 60)
    assert drbd(a, "role", RES) == "Secondary/Secondary"

    # Primary on a, btrfs, data.
    fact(a, ["drbdadm", "primary", RES], check=True)
    assert drbd(a, "role", RES) == "Primary/Secondary" and drbd(b, "role", RES) == "Secondary/Primary"
    fact(a, ["cat", "/proc/drbd"])
    fact(a, ["drbdsetup", "status", RES])
    a.run(["mkfs.btrfs", "-q", "-K", DEVICE])
    fact(a, ["blkid", "-p", BACKING])
    fact(b, ["blkid", "-p", BACKING])
    fact(a, ["wipefs", "--no-act", BACKING])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    a.run(["mount", DEVICE, str(mnt)])
    a.run(["udevadm", "settle"])
    udev_fs(a, BACKING)
    udev_fs(a, DEVICE)
    fact(a, ["btrfs", "filesystem", "show"])
    kernel_log(a, 2)
    a.run(["dd", "if=/dev/urandom", f"of={mnt}/data.bin", "bs=1M", "count=48", "status=none"], timeout=300)
    a.run(["sync"])
    sums = a.run(["sha256sum", f"{mnt}/data.bin"]).stdout.split()[0]
    size0 = sectors(a)
    assert sectors(b) == size0
    assert lv_bytes(a) - 2 * 1024**2 < size0 * 512 < lv_bytes(a), (size0, lv_bytes(a))
    print(f"drbd-fact: size before the grow: drbd {size0} sectors, LV {lv_bytes(a)} bytes on both")

    # The grow, as bsud would: a second volume per node, vgextend — first a's LV alone.
    for node in both:
        _, dev = pair.attach_new(node.name, 1)
        node.run(["lvm", "pvcreate", dev])
        node.run(["lvm", "vgextend", VG, dev])
    # by 256 MiB only: the forced resize below marks what it adds out of sync, resynced at the reconnect (a whole
    # 1 GiB took 76–146 s between two TCG guests; the lane's time)
    a.run(["lvm", "lvextend", "-L", "+256m", f"{VG}/{LV}"])
    print(f"drbd-fact: a's LV now {lv_bytes(a)} bytes, b's {lv_bytes(b)}")
    # (a) resize on the Primary while the peer's backing is still smaller: accepted (rc 0), nothing grows — DRBD
    # keeps the smaller of the two — but a's internal meta-data moves to its LV's new end ("md moved")
    assert fact(a, ["drbdadm", "resize", RES]).returncode == 0
    time.sleep(2)
    print(f"drbd-fact: after (a): drbd size a {sectors(a)}, b {sectors(b)} sectors (was {size0})")
    assert sectors(a) == sectors(b) == size0
    fact(a, ["cat", "/proc/drbd"])
    kernel_log(a, 3)
    kernel_log(b, 2)
    # (b) resize while the peer is disconnected: accepted (rc 0), silently nothing
    fact(a, ["drbdadm", "disconnect", RES], check=True)
    assert drbd(a, "cstate", RES) == "StandAlone" and drbd(b, "cstate", RES) == "WFConnection"
    assert fact(a, ["drbdadm", "resize", RES]).returncode == 0
    print(f"drbd-fact: after (b): drbd size a {sectors(a)} sectors")
    assert sectors(a) == size0
    # (c) the same with --assume-peer-has-space: a grows to its own backing alone; the new area is out of sync
    assert fact(a, ["drbdadm", "--", "--assume-peer-has-space", "resize", RES]).returncode == 0
    print(f"drbd-fact: after (c): drbd size a {sectors(a)}, b {sectors(b)} sectors")
    assert lv_bytes(a) - 2 * 1024**2 < sectors(a) * 512 < lv_bytes(a) and sectors(b) == size0
    fact(a, ["cat", "/proc/drbd"])
    kernel_log(a, 1)
    # reconnect while b's backing is smaller than a's device now: refused by a ("The peer's disk size is too small!"),
    # a StandAlone again, b Outdated and waiting
    too_small = "The peer's disk size is too small"
    fact(a, ["drbdadm", "connect", RES], check=True)
    wait_kernel(a, too_small, 1)
    wait_for(a, ["cstate"], "StandAlone", 30)
    for node in both:
        fact(node, ["drbdadm", "cstate", RES])
        fact(node, ["drbdadm", "dstate", RES])
        fact(node, ["cat", "/proc/drbd"])
        kernel_log(node)
    assert drbd(b, "dstate", RES) == "Outdated/DUnknown" and drbd(b, "cstate", RES) == "WFConnection"
    # b's backing grows too, while b is attached: still refused — b's DRBD offers the size its meta-data's place
    # gives it until a resize on b itself
    b.run(["lvm", "lvextend", "-L", "+256m", f"{VG}/{LV}"])
    print(f"drbd-fact: b's LV now {lv_bytes(b)} bytes")
    fact(a, ["drbdadm", "connect", RES], check=True)
    wait_kernel(a, too_small, 2)
    wait_for(a, ["cstate"], "StandAlone", 30)
    kernel_log(a, 2)
    # b's own forced resize (disconnected), then the connect succeeds and a resyncs the grown area to b
    assert fact(b, ["drbdadm", "--", "--assume-peer-has-space", "resize", RES]).returncode == 0
    print(f"drbd-fact: after b's own resize: drbd size b {sectors(b)} sectors")
    assert sectors(b) == sectors(a)
    kernel_log(b, 1)
    fact(a, ["drbdadm", "connect", RES], check=True)
    started = time.monotonic()
    wait_for(a, ["cstate"], "SyncSource", 60)
    for node in both:
        fact(node, ["cat", "/proc/drbd"])
    for node in both:
        wait_for(node, ["cstate"], "Connected", 300)  # Connected once the resync is done
    for node in both:
        wait_for(node, ["dstate"], "UpToDate/UpToDate", 60)
    print(f"drbd-fact: connected and UpToDate again {time.monotonic() - started:.1f} s after the connect")
    for node in both:
        kernel_log(node, 3)
    print(f"drbd-fact: after the reconnect: drbd size a {sectors(a)}, b {sectors(b)} sectors")
    assert sectors(a) == sectors(b) > size0
    assert a.run(["sha256sum", f"{mnt}/data.bin"]).stdout.split()[0] == sums
    grown_from = sectors(a)
    assert fact(a, ["drbdadm", "resize", RES]).returncode == 0  # nothing left to grow: rc 0, no change
    assert sectors(a) == sectors(b) == grown_from

    # The grow as bsud will do it: a volume more on each node, both LVs extended, then the Primary's resize.
    for node in both:
        _, dev = pair.attach_new(node.name, 1)
        node.run(["lvm", "pvcreate", dev])
        node.run(["lvm", "vgextend", VG, dev])
        node.run(["lvm", "lvextend", "-l", "+100%FREE", f"{VG}/{LV}"])
    assert lv_bytes(a) == lv_bytes(b)
    started = time.monotonic()
    # bsud's resize: the new area (fresh volumes on both nodes) taken as in sync — no resync over the link
    fact(a, ["drbdadm", "--", "--assume-clean", "resize", RES], check=True)
    print(f"drbd-fact: right after the resize: drbd size a {sectors(a)}, b {sectors(b)} sectors")
    assert sectors(b) == sectors(a) > grown_from  # the Secondary's device follows at once
    proc = fact(a, ["cat", "/proc/drbd"]).stdout
    assert "oos:0" in proc and "SyncSource" not in proc, proc  # nothing to resync
    for node in both:
        wait_for(node, ["dstate"], "UpToDate/UpToDate", 60)
    print(f"drbd-fact: UpToDate/UpToDate {time.monotonic() - started:.1f} s after the resize")
    size1 = sectors(a)
    print(f"drbd-fact: after the resize, both grown: drbd size a {size1}, b {sectors(b)} sectors (was {grown_from})")
    assert sectors(b) == size1 > grown_from
    assert lv_bytes(a) - 2 * 1024**2 < size1 * 512 < lv_bytes(a), (size1, lv_bytes(a))
    a.run(["btrfs", "filesystem", "resize", "max", str(mnt)])
    show = fact(a, ["btrfs", "filesystem", "show", "--raw", str(mnt)], check=True).stdout
    assert f"size {size1 * 512} " in show, show
    assert a.run(["sha256sum", f"{mnt}/data.bin"]).stdout.split()[0] == sums

    # Fail-over: a lets go, b takes over, the data is the same.
    a.run(["umount", str(mnt)])
    fact(a, ["drbdadm", "secondary", RES], check=True)
    fact(b, ["drbdadm", "primary", RES], check=True)
    assert drbd(b, "role", RES) == "Primary/Secondary" and drbd(a, "role", RES) == "Secondary/Primary"
    b.run(["mkdir", "-p", str(mnt)])
    b.run(["mount", DEVICE, str(mnt)])
    assert b.run(["sha256sum", f"{mnt}/data.bin"]).stdout.split()[0] == sums
    assert f"size {size1 * 512} " in fact(b, ["btrfs", "filesystem", "show", "--raw", str(mnt)], check=True).stdout
    kernel_log(b, 4)
    fact(b, ["drbdsetup", "status", RES])
    b.run(["umount", str(mnt)])
    fact(b, ["drbdadm", "secondary", RES], check=True)
