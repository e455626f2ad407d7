"""How fast bsud reacts: a steady writer against a fresh drive, rate by rate, beside a df-polling baseline.

Run as root from the checkout (after scripts/setup):

    .venv/bin/python bench/fill.py                      # the whole sweep (~25 min)
    .venv/bin/python bench/fill.py --rates 50,200,max --first 2 --idle-seconds 0   # a quick look
    .venv/bin/python bench/fill.py --idle-only          # the idle cost alone: one drive, then ten (~3 min)

Local provider (sparse files + loop devices), btrfs layout, a fresh drive per run. A writer appends 1 MiB
blocks to one file without fsync at a steady rate until it has written the first volume's size plus
``--extra-gib``, or gets ENOSPC. Printed per run: ENOSPC or not, MiB written, the rate reached, reaction
(bsud's sampler seeing the trigger → CreateVolume logged), grow time (CreateVolume → capacity usable), and
the volumes at the end. The same writer runs against:

- ``ceiling``: a plain file on the same disk (what this machine's disk takes);
- ``baseline``: what amazon-ebs-autoscale does — poll ``df`` every 2 s, add a volume (largest × 1.2, created,
  attached and ``btrfs device add``-ed the same way) once used ≥ 85 %.

Then the daemon's idle cost (``bench/idle.py``): CPU % of one core, RSS and threads over ``--idle-seconds``, with
one drive online, then with ten (one daemon, ten drives of 1 GiB; nothing writes to them).
Nothing here is a pass/fail test; the figures go to docs/operations.md ("How fast bsud reacts").
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsud.cloud.local import LocalCloud  # noqa: E402
from bsud.config import CloudSettings  # noqa: E402
from bsud.host.btrfs import Btrfs  # noqa: E402
from bsud.host.devices import DeviceWaiter, VolumeRef  # noqa: E402
from bsud.logs import configure_logging  # noqa: E402
from bsud.runner import Runner  # noqa: E402

MIB, GIB = 1024**2, 1024**3
DRIVE = "bench"


@dataclass
class Result:
    label: str
    first_gib: int
    rate: str
    enospc: bool = False
    written: int = 0
    seconds: float = 0.0
    reaction: float | None = None
    grow: float | None = None
    volumes: list[int] = field(default_factory=list)
    notes: str = ""

    def row(self) -> str:
        mbps = self.written / self.seconds / 1e6 if self.seconds else 0.0

        def sec(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"
        return (f"| {self.label} | {self.first_gib} GiB | {self.rate} | {'ENOSPC' if self.enospc else 'ok'} | "
                f"{self.written // MIB} | {mbps:.0f} | {sec(self.reaction)} | {sec(self.grow)} | "
                f"{'+'.join(map(str, self.volumes)) or '-'} |")


HEADER = ("| writer against | first volume | target MB/s | result | MiB written | MB/s reached | reaction s | "
          "grow s | volumes (GiB) |\n|---|---|---|---|---|---|---|---|---|")


def _digest(block: bytes) -> bytes:
    return hashlib.blake2b(block, digest_size=16).digest()


class Writer:
    """Appends 1 MiB blocks at ``rate`` bytes/s (None: as fast as it can), no fsync, until ``limit`` or ENOSPC.

    With ``verify``, every block is unique (random data stamped with its index) and its digest is kept, so
    :meth:`check` can read the file back; otherwise one random block is written again and again (the writer
    then costs no CPU).
    """

    def __init__(self, path: Path, rate: float | None, limit: int, verify: bool = False) -> None:
        self.path, self.rate, self.limit, self.verify = path, rate, limit, verify
        self.block = os.urandom(MIB)
        self.pool = [os.urandom(MIB) for _ in range(8)] if verify else []
        self.digests: list[bytes] = []
        self.written = 0
        self.enospc = False
        self.seconds = 0.0
        self.start = 0.0

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.start = time.monotonic()
        try:
            while self.written < self.limit:
                if self.rate:
                    delay = self.start + self.written / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                block = self._block(self.written // MIB) if self.verify else self.block
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        self.enospc = True
                        break
                    raise
                if self.verify:
                    self.digests.append(_digest(block))
                self.written += MIB
        finally:
            self.seconds = time.monotonic() - self.start
            os.close(fd)

    def _block(self, index: int) -> bytes:
        return index.to_bytes(8, "little") + self.pool[index % len(self.pool)][8:]

    @property
    def mbps(self) -> float:
        return self.written / self.seconds / 1e6 if self.seconds else 0.0

    def check(self) -> list[int]:
        """Blocks that do not read back as written (empty: every byte is intact)."""
        bad = []
        with open(self.path, "rb") as fh:
            for index, digest in enumerate(self.digests):
                if _digest(fh.read(MIB)) != digest:
                    bad.append(index)
            if fh.read(1):
                bad.append(len(self.digests))
        return bad


def log_times(log: Path) -> tuple[float | None, float | None]:
    """(reaction, grow) from bsud's JSON log: first trigger → first scale-up CreateVolume; its grow time."""
    trigger = create = grow = None
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        when = datetime.fromisoformat(event.get("timestamp", "1970-01-01T00:00:00+00:00").replace("Z", "+00:00"))
        if event.get("event") == "scale-up trigger" and trigger is None:
            trigger = when.timestamp()
        if event.get("event") == "step" and event.get("action") == "CreateVolume" and \
                event.get("phase") == "scaling-up" and create is None:
            create = when.timestamp()
        if event.get("event") == "grow done: capacity usable" and grow is None:
            grow = float(event["seconds"])
    reaction = create - trigger if trigger is not None and create is not None else None
    return reaction, grow


class Drive:
    """A bsud daemon on a fresh local-provider drive in its own directory (``count`` > 1: that many drives, named
    ``bench``, ``bench-2``…, in the one daemon)."""

    def __init__(self, base: Path, first_gib: int, count: int = 1) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
        self.mount = self.dir / "mnt"
        self.config = self.dir / "bsud.json"
        self.status = self.dir / "status.json"
        self.log = self.dir / "bsud.log"
        self.state = self.dir / "state"
        self.names = [DRIVE] + [f"{DRIVE}-{i}" for i in range(2, count + 1)]
        self.config.write_text(json.dumps({
            "cloud": {"provider": "local", "state-dir": str(self.state), "instance-id": "i-bench"},
            "daemon": {"status-file": str(self.status)},
            "drives": [{"name": name, "target": "online", "layout": "btrfs", "initial-size-gib": first_gib,
                        "mount-path": str(self.mount if name == DRIVE else self.dir / f"mnt-{name}"),
                        "max-bsu-count": 10, "max-total-size-gib": 64} for name in self.names],
        }))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.log, "a")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "bsud", "-c", str(self.config)], cwd=ROOT,
                                     stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "BSUD_LOG": "info"})

    def drive_status(self, name: str = DRIVE) -> dict:
        try:
            return json.loads(self.status.read_text())["drives"][name]
        except (OSError, ValueError, KeyError):
            return {}

    def wait_online(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout * len(self.names)
        while time.monotonic() < deadline:
            states = [self.drive_status(name) for name in self.names]
            if all(st.get("phase") == "online" and st.get("action") == "Idle" and
                   all(v.get("member") for v in st.get("volumes", [])) for st in states):
                return states[0]
            time.sleep(0.2)
        raise RuntimeError(f"drives not online after {timeout * len(self.names)} s; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.proc = None

    def volumes(self) -> list[int]:
        cloud = LocalCloud(CloudSettings(provider="local", state_dir=str(self.state), instance_id="i-bench"))
        return sorted(v.size_gib for v in cloud.list_volumes())

    def destroy(self) -> None:
        self.stop()
        # bsud's own teardown (bsud.cleanup has no entry point: the cleanup is ``bsud delete-drive``)
        subprocess.run([sys.executable, "-m", "bsud", "delete-drive", "--yes", "-c", str(self.config), "--all"],
                       cwd=ROOT, capture_output=True, timeout=600)
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


def baseline_poller(drive: Drive, stop: threading.Event, first_gib: int, events: dict) -> None:
    """amazon-ebs-autoscale's way: df every 2 s, ≥ 85 % → a volume of largest × 1.2, added to btrfs."""
    cloud = LocalCloud(CloudSettings(provider="local", state_dir=str(drive.state), instance_id="i-bench"))
    runner = Runner()
    btrfs = Btrfs(runner)
    largest = first_gib
    while not stop.wait(2.0):
        st = os.statvfs(drive.mount)
        used = (st.f_blocks - st.f_bfree) / st.f_blocks * 100 if st.f_blocks else 0
        if used < 85:
            continue
        t0 = time.monotonic()
        size = -(-largest * 120 // 100)
        vol = cloud.create_volume(DRIVE, size, "gp2")
        with DeviceWaiter() as waiter:
            cloud.attach_volume(vol.id)
            attached = cloud.wait_attached(vol.id, timeout=30)
            found = waiter.wait(VolumeRef.from_volume(attached, "i-bench"), timeout=30)
        btrfs.device_add(found.device, str(drive.mount))
        events.setdefault("grows", []).append(time.monotonic() - t0)
        largest = size


def run_bsud(base: Path, first_gib: int, rate: float | None, extra_gib: float) -> Result:
    drive = Drive(base, first_gib)
    label = "max" if rate is None else f"{rate / 1e6:.0f}"
    result = Result("bsud", first_gib, label)
    try:
        drive.start()
        drive.wait_online()
        writer = Writer(drive.mount / "fill", rate, int((first_gib + extra_gib) * GIB))
        writer.run()
        time.sleep(1.0)
        result.enospc, result.written, result.seconds = writer.enospc, writer.written, writer.seconds
        result.reaction, result.grow = log_times(drive.log)
        result.volumes = drive.volumes()
    finally:
        drive.destroy()
    return result


def run_baseline(base: Path, first_gib: int, rate: float | None, extra_gib: float) -> Result:
    drive = Drive(base, first_gib)
    label = "max" if rate is None else f"{rate / 1e6:.0f}"
    result = Result("df baseline", first_gib, label)
    stop = threading.Event()
    events: dict = {}
    try:
        drive.start()
        drive.wait_online()
        drive.stop()  # the drive stays mounted; from here on only the baseline poller grows it
        poller = threading.Thread(target=baseline_poller, args=(drive, stop, first_gib, events), daemon=True)
        poller.start()
        writer = Writer(drive.mount / "fill", rate, int((first_gib + extra_gib) * GIB))
        writer.run()
        stop.set()
        poller.join(60)
        result.enospc, result.written, result.seconds = writer.enospc, writer.written, writer.seconds
        result.grow = events["grows"][0] if events.get("grows") else None
        result.volumes = drive.volumes()
    finally:
        stop.set()
        drive.destroy()
    return result


def run_ceiling(base: Path, gib: float) -> Result:
    path = base / "ceiling.bin"
    writer = Writer(path, None, int(gib * GIB))
    writer.run()
    os.sync()
    path.unlink()
    result = Result("plain file (ceiling)", 0, "max")
    result.written, result.seconds = writer.written, writer.seconds
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="25,50,100,200,400,max", help="MB/s list; 'max' = unthrottled")
    parser.add_argument("--first", default="1,2", help="first volume sizes in GiB")
    parser.add_argument("--extra-gib", type=float, default=1.5, help="write the first volume's size plus this")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="0 to skip the idle measurement")
    parser.add_argument("--idle-only", action="store_true", help="only the idle cost (one drive, then ten)")
    parser.add_argument("--dir", default="/var/tmp/bsud-bench", help="where volumes and the ceiling file go")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/fill.py: run as root (loop devices, mounts)", file=sys.stderr)
        return 2
    configure_logging("warning")
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    from bench.idle import idle_cost  # it builds on this module's Drive

    if args.idle_only:
        for drives in (1, 10):
            print(idle_cost(base, args.idle_seconds or 60.0, drives), flush=True)
        return 0
    rates = [None if r == "max" else float(r) * 1e6 for r in args.rates.split(",")]
    firsts = [int(x) for x in args.first.split(",")]

    rows = [run_ceiling(base, max(firsts) + args.extra_gib)]
    print(HEADER)
    print(rows[0].row(), flush=True)
    survived: dict[tuple[str, int], str] = {}
    for first in firsts:
        for rate in rates:
            runs = [run_bsud] + ([] if args.no_baseline else [run_baseline])
            for run in runs:
                result = run(base, first, rate, args.extra_gib)
                print(result.row(), flush=True)
                survived.setdefault((result.label, first), "none")
                if not result.enospc:
                    survived[(result.label, first)] = f"{result.rate} MB/s"
    print()
    for (label, first), rate in sorted(survived.items()):
        print(f"highest target rate survived: {label}, first volume {first} GiB: {rate}")
    if args.idle_seconds > 0:
        for drives in (1, 10):
            print(idle_cost(base, args.idle_seconds, drives), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
