"""A highly available drive that grows (issue 23), in a pair of guests: each runs bsud with a drive of its own (lvm,
EC2 provider against the one moto, disks hot-plugged into the guest whose instance they are attached to), DRBD
replicates between the two drives' LVs over the guests' network.

Node a is made Primary (by hand, as drbd-reactor's promoter would), btrfs on the DRBD device mounted at a's drive's
mount path; a steady writer fills it past the threshold: a's bsud makes its volume and one for b's drive, attaches
that one to b's VM, whose bsud joins it to its LV; a's bsud resizes DRBD once b's drive has caught up and grows the
filesystem — no ENOSPC. Fail-over to b (unmount, Secondary on a, Primary on b, mount on b): every byte there. A
writer on b: b's bsud leads the next grow, and a's bsud is killed (-9) in the middle of it (the moment b attaches
a's new volume), started again, and converges. In the first grow it is the Primary's bsud (a's) that is killed, the
moment it made b's volume. The times (reaction, each node's grow, the resize) are printed as
``ha-time:`` lines for docs/ha.md.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.fill import MIB, Writer

from ..host.daemon_harness import _seconds, events_in, log_events

pytestmark = pytest.mark.vm

RES, DEVICE, MINOR = "r0", "/dev/drbd0", 0
DRIVES = {"a": "ha-a", "b": "ha-b"}
#: A drive of 1 GiB that scales at 40 % used: the first grow comes after ~400 MiB, the second (the drive then ~4 GiB)
#: after ~1.6 GiB in all; the rate rule may come first (the EC2 default grow estimate is 60 s).
SETTINGS = {"initial-size-gib": 1, "max-total-size-gib": 8, "max-bsu-count": 6, "max-used-space-perc": 40,
            "min-used-space-perc": 10}
RATE = 8e6

WRITER = """
import json, sys
from pathlib import Path
from bench.fill import Writer
w = Writer(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), verify=True)
w.run()
print(json.dumps({"written": w.written, "enospc": w.enospc, "seconds": w.seconds, "bad": w.check()}))
"""


def resource_file() -> str:
    return (f"resource {RES} {{\n    protocol C;\n    device {DEVICE} minor {MINOR};\n    meta-disk internal;\n"
            f"    on vm-a {{ address 10.99.1.1:7789; disk /dev/{DRIVES['a']}/bsud; }}\n"
            f"    on vm-b {{ address 10.99.1.2:7789; disk /dev/{DRIVES['b']}/bsud; }}\n}}\n")


def status_of(node, path: Path, drive: str) -> dict:
    try:
        return json.loads(node.read(path))["drives"][drive]
    except (OSError, RuntimeError, ValueError, KeyError):
        return {}


def wait(what: str, check, timeout: float, tails=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out ({timeout:g} s) waiting for {what}\n" + "\n".join(t() for t in tails))


def drbd(node, *args: str) -> str:
    return node.run(["drbdadm", *args, RES], check=False).stdout.strip()


def drbd_bytes(node) -> int:
    return int(node.run(["cat", f"/sys/block/drbd{MINOR}/size"]).stdout) * 512


def lv_bytes(node, drive: str) -> int:
    return int(node.run(["lvm", "lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size",
                         f"{drive}/bsud"]).stdout)


def fs_bytes(node, mount: Path) -> int:
    out = node.run(["btrfs", "filesystem", "show", "--raw", str(mount)]).stdout
    return sum(int(line.split()[3]) for line in out.splitlines() if line.strip().startswith("devid"))


def timeline(node_name: str, events: list[dict], since: float) -> list[str]:
    """The steps of a grow as the daemon logged them: seconds since ``since``, what."""
    wanted = ("CreateVolume", "CreatePeerVolume", "AttachPeerVolume", "AttachVolume", "MarkVolume", "Join", "Grow",
              "ResizeReplica")
    lines = []
    for e in events:
        t = _seconds(e["timestamp"]) - since if "timestamp" in e else None
        if t is None or t < 0:
            continue
        if e.get("event") == "step" and e.get("action") in wanted or e.get("event") in (
                "scale-up trigger", "grow done: capacity usable", "block device event: looking again",
                "DRBD device resized", "volume created for the peer's drive"):
            lines.append(f"ha-time: {node_name} +{t:6.1f} s {e.get('event')} {e.get('action', '')}".rstrip())
    return lines


def b_events(b, path: str) -> list[dict]:
    """b's daemon log, read through the peer agent."""
    return events_in(b.read(path).decode(errors="replace"))


def test_an_ha_drive_grows_on_both_nodes_through_a_fail_over_and_a_kill(pair, tmp_path: Path):
    a, b = pair.a, pair.b
    nodes = {"a": a, "b": b}
    hs = {}
    for name, drive in DRIVES.items():
        other = DRIVES["b" if name == "a" else "a"]
        hs[name] = pair.harness(name, tmp_path / name, drive, **SETTINGS,
                                ha={"drbd-resource": RES, "drbd-device": DEVICE, "peer-drive": other,
                                    "service-ip": "10.99.1.50/24"})
    ha, hb = hs["a"], hs["b"]
    b_child: dict = {}

    def start_b() -> None:
        b_child.update(b.spawn([sys.executable, "-m", "bsud", "-c", str(hb.config_path)]))

    def b_tail() -> str:
        return "b's bsud: " + "\n".join(b.read(b_child["log"]).decode(errors="replace").splitlines()[-40:])

    def a_tail() -> str:
        return "a's bsud: " + ha.tail(40)

    try:
        ha.start()
        start_b()
        for name, h in hs.items():
            wait(f"{name}'s backing LV", lambda n=nodes[name], d=DRIVES[name]:
                 n.run(["test", "-e", f"/dev/{d}/bsud"], check=False).returncode == 0, 300, (a_tail, b_tail))
        # DRBD on both LVs, connected, no initial sync (fresh devices), Primary on a, btrfs, mounted by "the gateway".
        for node in (a, b):
            node.write(f"/etc/drbd.d/{RES}.res", resource_file())
            node.run(["drbdadm", "create-md", RES], input="yes\nyes\n", timeout=120)
            node.run(["drbdadm", "up", RES], timeout=120)
        wait("DRBD connected", lambda: drbd(a, "cstate") == "Connected" and drbd(b, "cstate") == "Connected", 120)
        a.run(["drbdadm", "--", "--clear-bitmap", "new-current-uuid", RES])
        wait("UpToDate on both", lambda: drbd(a, "dstate") == "UpToDate/UpToDate", 60)
        a.run(["drbdadm", "primary", RES])
        a.run(["mkfs.btrfs", "-q", "-K", DEVICE])
        ha.mount.mkdir(exist_ok=True)
        a.run(["mount", DEVICE, str(ha.mount)])
        size0 = drbd_bytes(a)
        ha.wait_for("a Primary, mounted", lambda s: s.get("mounted") and (s.get("replication") or {}).get("role")
                    == "Primary", 120)
        wait("b's bsud idle as the Secondary", lambda: "the Primary's bsud grows the drive" in
             status_of(b, hb.status_path, DRIVES["b"]).get("reason", ""), 120, (b_tail,))

        # A steady writer on a, past the threshold: both nodes' LVs grow, DRBD is resized, btrfs grown.
        started, wall = time.monotonic(), time.time()
        writer = Writer(ha.mount / "one.bin", RATE, 600 * MIB, verify=True)
        # The Primary's bsud is killed (-9) the moment it has made b's volume (before attaching it), and started
        # again: the grow resumes from the tags (b's volume attached by the restarted bsud), the writer unaware.
        killed = threading.Event()

        def kill_the_primary_mid_grow() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and '"action": "CreatePeerVolume"' not in ha.log_path.read_text():
                time.sleep(0.2)
            ha.proc.send_signal(signal.SIGKILL)
            ha.wait_exit(30)
            ha.start()
            killed.set()
        killer = threading.Thread(target=kill_the_primary_mid_grow, daemon=True)
        killer.start()
        writer.run()
        killer.join(300)
        assert killed.is_set(), f"a's bsud never made b's volume\n{a_tail()}"
        assert not writer.enospc, f"ENOSPC after {writer.written >> 20} MiB\n{a_tail()}\n{b_tail()}"
        wait("the DRBD device grown on both", lambda: drbd_bytes(a) > size0 and drbd_bytes(b) == drbd_bytes(a),
             600, (a_tail, b_tail))
        wait("btrfs on a grown", lambda: fs_bytes(a, ha.mount) >= drbd_bytes(a) - 16 * MIB, 300, (a_tail, b_tail))
        assert writer.check() == []
        grown = drbd_bytes(a)
        assert lv_bytes(a, DRIVES["a"]) >= grown and lv_bytes(b, DRIVES["b"]) >= grown
        print(f"ha-time: first grow (led by a): {time.monotonic() - started:.1f} s from the writer's start, "
              f"drbd {size0 >> 20} → {grown >> 20} MiB")
        for line in timeline("a", log_events(ha.log_path), wall) + timeline("b", b_events(b, b_child["log"]), wall):
            print(line)
        a.run(["sync"])
        sums = a.run(["sha256sum", str(ha.mount / "one.bin")]).stdout.split()[0]

        # Fail-over to b: every byte there.
        a.run(["umount", str(ha.mount)])
        a.run(["drbdadm", "secondary", RES])
        b.run(["drbdadm", "primary", RES])
        b.run(["mkdir", "-p", str(hb.mount)])
        b.run(["mount", DEVICE, str(hb.mount)])
        assert b.run(["sha256sum", str(hb.mount / "one.bin")]).stdout.split()[0] == sums
        wait("b Primary, mounted, watched by b's bsud", lambda: (status_of(b, hb.status_path, DRIVES["b"])
             .get("replication") or {}).get("role") == "Primary" and status_of(b, hb.status_path, DRIVES["b"])
             .get("mounted"), 120, (b_tail,))

        # b's bsud leads the next grow; a's bsud is killed the moment b attaches a's new volume, and started again.
        before = drbd_bytes(b)
        wall = time.time()
        run = b.spawn([sys.executable, "-c", WRITER, str(hb.mount / "two.bin"), str(RATE), str(1100 * MIB)])
        wait("b makes a volume for a's drive", lambda: "CreatePeerVolume" in b.read(b_child["log"]).decode(), 600,
             (a_tail, b_tail))
        ha.proc.send_signal(signal.SIGKILL)
        ha.wait_exit(30)
        time.sleep(5)
        ha.start()
        wait("b's writer done", lambda: b.poll(run["child"]) is not None, 900, (a_tail, b_tail))
        result = json.loads(b.read(run["log"]).decode().strip().splitlines()[-1])
        assert not result["enospc"] and result["bad"] == [], (result, a_tail(), b_tail())
        wait("the DRBD device grown again", lambda: drbd_bytes(b) > before and drbd_bytes(a) == drbd_bytes(b),
             600, (a_tail, b_tail))
        assert lv_bytes(a, DRIVES["a"]) >= drbd_bytes(b) and lv_bytes(b, DRIVES["b"]) >= drbd_bytes(b)
        wait("a's bsud back, Secondary, idle", lambda: (ha.status().get("replication") or {}).get("role") ==
             "Secondary" and ha.status().get("action") == "Idle", 300, (a_tail,))
        print(f"ha-time: second grow (led by b, a's bsud killed mid-grow): drbd {before >> 20} → "
              f"{drbd_bytes(b) >> 20} MiB")
        for line in timeline("b", b_events(b, b_child["log"]), wall) + timeline("a", log_events(ha.log_path), wall):
            print(line)
        assert b.run(["sha256sum", str(hb.mount / "one.bin")]).stdout.split()[0] == sums
    finally:
        # DRBD off the LVs first (an ha drive is never taken offline while its resource is up), then both drives
        # deleted (a's by its harness).
        for node, h in ((a, ha), (b, hb)):
            node.run(["umount", "-l", str(h.mount)], check=False)
            node.run(["drbdadm", "down", RES], check=False)
        if b_child:
            b.kill(b_child["child"], signal.SIGKILL)
            b.run([sys.executable, "-m", "bsud", "delete-drive", "--yes", "-c", str(hb.config_path), "--all"],
                  check=False, timeout=600)
        ha.close()
