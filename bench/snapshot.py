"""How long ``bsud snapshot`` freezes a drive, and how long the whole set takes, by the drive's volume count.

Run as root from the checkout (after scripts/setup):

    .venv/bin/python bench/snapshot.py                  # drives of 1, 2, 4 and 8 volumes (~3 min)
    .venv/bin/python bench/snapshot.py --counts 2,8 --sets 5

Local provider (sparse files + loop devices), btrfs layout. Per count, a daemon's drive (tests/host/daemon_harness.py)
grown by its own rules to that many volumes of 1 GiB: ``max-used-space-perc`` 2, ``min-used-space-perc`` 1, and
``max-total-size-gib`` raised by 1 GiB (SIGHUP) before each grow, so that every volume added is 1 GiB; written in
4 MiB files until the daemon has added the volume, then topped up to ``--mib-per-volume`` × the count (synced).
Then ``--sets`` snapshot sets with ``take_set`` (what ``bsud snapshot`` runs, in this process: its ``Taken`` gives the
freeze, FIFREEZE → FITHAW, and the whole set, the drive's observation and the freeze guard's start included).
Beside them, as many runs of the baseline, alternated with bsud's: what a script does by hand — ``fsfreeze
--freeze``, one snapshot per volume of the drive (the same provider call) one after the other, ``fsfreeze
--unfreeze`` — consistent as well, but frozen for the sum of the calls rather than the slowest.

Printed: per count and per way, the drive's data (its files, and the bytes its volumes' files hold: what a sparse
copy reads), the freeze and the whole set (min / median / max), and the copy the local provider makes: a reflink where
the filesystem under ``--dir`` has them (nothing copied), else a sparse copy (its time grows with the data). Every
set, drive, loop device and mount is removed after each count, on failure too. Nothing here is a pass/fail test;
the figures go to docs/backups.md ("Figures").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsud.backup.take import delete_set, take_set  # noqa: E402
from bsud.cloud import make_provider  # noqa: E402
from bsud.cloud.local import LocalCloud  # noqa: E402
from bsud.config import load_config  # noqa: E402
from bsud.logs import configure_logging  # noqa: E402
from tests.host.conftest import teardown_dir  # noqa: E402
from tests.host.daemon_harness import DaemonHarness  # noqa: E402

MIB = 1024**2
DRIVE = "snapbench"
STEP_MIB = 4


@dataclass
class Row:
    label: str
    count: int
    data: int = 0
    held: int = 0
    freezes: list[float] = field(default_factory=list)
    sets: list[float] = field(default_factory=list)

    def row(self, copy: str) -> str:
        def spread(xs: list[float]) -> str:
            return f"{min(xs):.3f} / {statistics.median(xs):.3f} / {max(xs):.3f}" if xs else "-"
        return (f"| {self.label} | {self.count} | {self.data / MIB:.0f} | {self.held / MIB:.0f} | {copy} | "
                f"{spread(self.freezes)} | {spread(self.sets)} |")


HEADER = ("| snapshot set by | volumes | data MiB | in the volumes' files MiB | copy | freeze s (min / median / max) | "
          "whole set s (min / median / max) |\n|---|---|---|---|---|---|---|")


def copy_kind(base: Path) -> str:
    """What the local provider's ``cp --reflink=auto --sparse=always`` does under ``base``: reflink or sparse."""
    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(base)], capture_output=True,
                            text=True).stdout.strip()
    probe = Path(tempfile.mkdtemp(prefix="reflink-", dir=base))
    try:
        (probe / "a").write_bytes(os.urandom(4096))
        done = subprocess.run(["cp", "--reflink=always", str(probe / "a"), str(probe / "b")], capture_output=True)
    finally:
        subprocess.run(["rm", "-rf", str(probe)], check=False)
    return f"reflink ({fstype})" if done.returncode == 0 else f"sparse ({fstype}: no reflink)"


def reload(h: DaemonHarness, **changes: object) -> None:
    """The config changed and reloaded (SIGHUP), waiting for the daemon to say it applied it."""
    def top() -> dict:
        try:
            return json.loads(h.status_path.read_text())
        except (OSError, ValueError):
            return {}
    before = top().get("reloads", 0)
    h.write_config(**changes)
    h.signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = top()
        if data.get("reloads", 0) > before:
            if data.get("reload_result") != "applied":
                raise RuntimeError(f"config refused: {data.get('reload_result')}")
            return
        time.sleep(0.2)
    raise RuntimeError("the daemon did not reload its config")


def grown_drive(h: DaemonHarness, count: int, mib_per_volume: int) -> dict:
    """The drive grown by the daemon to ``count`` volumes of 1 GiB, then holding ``mib_per_volume`` × count MiB."""
    h.start()
    h.wait_online(volumes=1)
    written = 0
    for target in range(2, count + 1):
        reload(h, **{"max-total-size-gib": target})
        while len(h.status().get("volumes", [])) < target:
            if not h.alive() or written > 64 * count:
                raise RuntimeError(f"{written} MiB written and still {len(h.status().get('volumes', []))} volumes; "
                                   f"log tail:\n{h.tail()}")
            h.fill(f"grow{written:05d}.bin", STEP_MIB)
            written += STEP_MIB
            try:
                h.wait_for(f"{target} volumes", lambda st: len(st.get("volumes", [])) >= target, timeout=3)
            except AssertionError:
                continue
        h.wait_online(volumes=target)
    if written < mib_per_volume * count:
        h.fill("data.bin", mib_per_volume * count - written)
    return h.wait_online(volumes=count)


def held_bytes(h: DaemonHarness) -> int:
    """Bytes the drive's volume files hold (allocated): what a sparse copy of them reads."""
    return sum(p.stat().st_blocks * 512 for p in (h.state_dir / "volumes").glob("*.img"))


def by_hand(h: DaemonHarness, cloud: LocalCloud) -> tuple[float, float, list[str]]:
    """The baseline: fsfreeze, one snapshot per volume of the drive one after the other, unfreeze. (freeze seconds,
    whole seconds, the snapshots made)."""
    started = time.monotonic()
    volumes = sorted(v.id for v in cloud.list_volumes() if v.drive == DRIVE)
    made: list[str] = []
    subprocess.run(["fsfreeze", "--freeze", str(h.mount)], check=True)
    try:
        began = time.monotonic()
        for vid in volumes:
            made.append(cloud.create_snapshot(vid, f"by hand: {vid}", {"bench": "by-hand"}).id)
        freeze = time.monotonic() - began
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(h.mount)], check=True)
    return freeze, time.monotonic() - started, made


def release(directory: Path) -> None:
    """What is left under ``directory`` after bsud's delete-drive (nothing, unless it failed): its mounts thawed,
    then unmounted and its loop devices — only those backed by a file under it — detached (the host tests'
    teardown), then the directory."""
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh if line.split()[4].startswith(str(directory))]
    for point in points:
        subprocess.run(["fsfreeze", "--unfreeze", point], capture_output=True)
    teardown_dir(directory)
    subprocess.run(["rm", "-rf", str(directory)], check=False)


def measure(base: Path, count: int, args: argparse.Namespace) -> list[Row]:
    workdir = Path(tempfile.mkdtemp(prefix="snapshot-", dir=base))
    h = DaemonHarness(workdir, drive=DRIVE, **{"initial-size-gib": 1, "max-bsu-count": count + 1,
                                               "max-total-size-gib": 1, "max-used-space-perc": 2,
                                               "min-used-space-perc": 1, "disk-scale-factor-perc": 1})
    rows = [Row("bsud snapshot", count)] + ([] if args.no_baseline else
                                             [Row("by hand: fsfreeze, one snapshot after another", count)])
    try:
        grown_drive(h, count, args.mib_per_volume)
        subprocess.run(["sync"], check=True)
        for r in rows:
            r.data, r.held = sum(p.stat().st_size for p in h.mount.glob("*.bin")), held_bytes(h)
        config = load_config(h.config_path)
        cloud = make_provider(config)
        assert isinstance(cloud, LocalCloud)
        for _ in range(args.sets):
            taken = take_set(config, DRIVE, cloud)
            if len(taken.set.members) != count or taken.freeze_seconds is None:
                raise RuntimeError(f"a set of {len(taken.set.members)} volumes (frozen: {taken.freeze_seconds}); "
                                   f"the drive has {count}")
            rows[0].freezes.append(taken.freeze_seconds)
            rows[0].sets.append(taken.seconds)
            delete_set(cloud, taken.set.id)
            if not args.no_baseline:
                freeze, whole, made = by_hand(h, cloud)
                rows[1].freezes.append(freeze)
                rows[1].sets.append(whole)
                for snap_id in made:
                    cloud.delete_snapshot(snap_id)
        return rows
    finally:
        try:
            if h.mounted():
                subprocess.run(["fsfreeze", "--unfreeze", str(h.mount)], capture_output=True)
            leftover = LocalCloud(load_config(h.config_path).cloud)
            for snap in leftover.list_snapshots():
                leftover.delete_snapshot(snap.id)
        finally:
            h.close()
            DaemonHarness.running.remove(h)
            release(workdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1,2,4,8", help="volume counts of the drives measured (default 1,2,4,8)")
    parser.add_argument("--sets", type=int, default=3, help="snapshot sets per count, and as many baseline runs")
    parser.add_argument("--mib-per-volume", type=int, default=24, help="data on the drive: this × its volumes")
    parser.add_argument("--no-baseline", action="store_true", help="bsud's sets only")
    parser.add_argument("--dir", default="/var/tmp/bsud-bench", help="where the drives' state-dir and mounts go")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/snapshot.py: run as root (loop devices, mounts, freezes)", file=sys.stderr)
        return 2
    configure_logging("warning")
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    counts = [int(c) for c in args.counts.split(",")]
    copy = copy_kind(base)
    started = time.monotonic()
    print(f"local provider, btrfs layout, volumes of 1 GiB, {args.mib_per_volume} MiB of data per volume, "
          f"{args.sets} sets per count; a snapshot is a {copy} copy of its volume's file under {base}\n")
    print(HEADER, flush=True)
    for count in counts:
        for r in measure(base, count, args):
            print(r.row(copy.split(" ")[0]), flush=True)
    print(f"\n{time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
