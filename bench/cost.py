"""What a drive costs over a compressed day: capacity provisioned against what the data needed.

Run as root from the checkout (after scripts/setup):

    .venv/bin/python bench/cost.py                       # this checkout and the bsud before issue 21 (~8 min)
    .venv/bin/python bench/cost.py --no-original         # this checkout only

The day, on the local provider (sparse files + loop devices), btrfs layout, issue 21's drive (first volume 1 GiB,
min 30 %, max 75 %, factor 100): a burst of ``--burst-gib`` written as fast as the page cache takes it (files of
``--file-mib``), deletes down to ``--keep-gib`` (every other file kept, so the data left is spread over the
volumes), a quiet of ``--quiet-seconds``, a second burst of ``--burst2-gib``, its files deleted, a last quiet. The
quiet is compressed: the daemon runs with ``rate-peak-seconds`` 5 (a burst holds a scale-down back 5 s instead of
a minute) and ``full-check-seconds`` 2 (a removal is planned within 2 s instead of a minute); everything else is the
default (the local provider's first grow estimate: 5 s).

Printed: the drive's size after each phase, GiB at the end and GiB·hours over the run, beside

- ``ideal``: the data at the middle of min and max (D / middle % at the end; used / middle % along the run, at
  least the first volume);
- ``never shrink``: the same grows, nothing ever removed (amazon-ebs-autoscale's behaviour);
- ``bsud before issue 21``: the same day run with the code of this branch's merge base (``git archive``):
  removal of the largest volume only, volumes sized for the first second's rate.

Per burst, the capacity it added against what surviving it needed (its peak data at max-used-space-perc, less the
size before); per removal, the bytes written to the devices that stay (their ``/sys/class/block/*/stat``) while
it ran against the live data of the volume removed (the daemon's RemoveFromDrive log line) — not judged for a
removal that ran while the bench itself wrote or deleted (bsud may right-size the drive around a burst's data as
soon as the burst is over, racing the deletes: their commits, and a file deleted after it was counted live, are in
or out of the counters by chance: 306 MiB live "moved" 505 MiB in one run, 506 MiB live 304 MiB in the next). And
whether any write got ENOSPC. Nothing here is a pass/fail test; the figures go to docs/operations.md ("Scaling").
The daemon's log is kept under ``--dir``/logs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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

from bench.fill import Writer  # noqa: E402

MIB, GIB = 1024**2, 1024**3
DRIVE = "cost"
MIN_PERC, MAX_PERC, FIRST_GIB = 30, 75, 1
MIDDLE = (MIN_PERC + MAX_PERC) / 2


class Counters(threading.Thread):
    """Bytes written by each loop device backed by a file under ``state_dir``, every 0.1 s: (time, {volume: bytes})."""

    def __init__(self, state_dir: Path, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.state_dir, self.every = state_dir, every
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.halt = threading.Event()

    def read(self) -> dict[str, int]:
        out = subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True).stdout
        found = {}
        for d in json.loads(out).get("loopdevices", []) if out.strip() else []:
            back = d.get("back-file") or ""
            if back.startswith(str(self.state_dir)):
                name = d["name"].rsplit("/", 1)[-1]
                try:
                    found[Path(back.split()[0]).stem] = \
                        int(Path(f"/sys/class/block/{name}/stat").read_text().split()[6]) * 512
                except (OSError, IndexError, ValueError):
                    pass
        return found

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append((time.time(), self.read()))
            self.halt.wait(self.every)

    def stop(self) -> None:
        self.halt.set()
        self.join()

    def written(self, start: float, end: float, leaving: str) -> int:
        """Bytes the devices other than ``leaving`` wrote from the last sample before ``start`` to the first after
        ``end`` (a device that appeared meanwhile counts from 0)."""
        before = max((s for s in self.samples if s[0] <= start), key=lambda s: s[0], default=self.samples[0])[1]
        after = min((s for s in self.samples if s[0] >= end), key=lambda s: s[0], default=self.samples[-1])[1]
        return sum(value - before.get(vol, 0) for vol, value in after.items() if vol != leaving)


def log_events(log: Path) -> list[tuple[float, dict]]:
    events = []
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if "timestamp" in event:
            events.append((datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp(), event))
    return events


def removals(log: Path) -> list[dict]:
    """Each RemoveFromDrive in a daemon's log: the volume, its live data, when it started and when the next step (the
    removal done) started."""
    steps = [(t, e) for t, e in log_events(log) if e.get("event") == "step"]
    found: list[dict] = []
    for i, (when, event) in enumerate(steps):
        if event.get("action") != "RemoveFromDrive" or (found and found[-1]["volume"] == event["volume_id"]):
            continue
        end = next((t for t, e in steps[i + 1:] if e.get("action") != "RemoveFromDrive"), None)
        found.append({"volume": event["volume_id"], "live": event.get("live_bytes"), "start": when, "end": end})
    return found


def creates(log: Path) -> list[str]:
    return [f"{e.get('size_gib')} GiB: {e.get('reason', '')}" for _, e in log_events(log)
            if e.get("event") == "step" and e.get("action") == "CreateVolume"]


@dataclass
class Run:
    label: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)   # (time, GiB provisioned, used bytes)
    marks: dict[str, int] = field(default_factory=dict)                    # phase → GiB at its end
    bursts: list[tuple[int, int, int]] = field(default_factory=list)       # (GiB before, GiB after, peak used)
    # (volume, GiB, live, written, whether the bench's own writes or deletes ran meanwhile)
    moves: list[tuple[str, int, int, int, bool]] = field(default_factory=list)
    busy: list[tuple[float, float]] = field(default_factory=list)          # when the bench wrote or deleted
    enospc: bool = False
    creates: list[str] = field(default_factory=list)
    log: Path | None = None                                                # the daemon's log, kept

    def gib_hours(self, curve: list[tuple[float, float]]) -> float:
        return sum((b[0] - a[0]) * a[1] for a, b in zip(curve, curve[1:])) / 3600

    def provisioned(self) -> list[tuple[float, float]]:
        return [(t, g) for t, g, _ in self.samples]

    def never_shrink(self) -> list[tuple[float, float]]:
        top, out = 0.0, []
        for t, g, _ in self.samples:
            top = max(top, g)
            out.append((t, top))
        return out

    def ideal(self) -> list[tuple[float, float]]:
        return [(t, max(FIRST_GIB, math.ceil(u / (MIDDLE / 100) / GIB))) for t, _, u in self.samples]


class Day:
    """One daemon (``code`` checkout) on a fresh drive, through the compressed day."""

    def __init__(self, base: Path, code: Path, label: str, args: argparse.Namespace) -> None:
        self.code, self.args = code, args
        self.dir = Path(tempfile.mkdtemp(prefix="cost-", dir=base))
        self.mount, self.state = self.dir / "mnt", self.dir / "state"
        self.config, self.status, self.log = self.dir / "bsud.json", self.dir / "status.json", self.dir / "bsud.log"
        self.config.write_text(json.dumps({
            "cloud": {"provider": "local", "state-dir": str(self.state), "instance-id": "i-cost"},
            "daemon": {"status-file": str(self.status), "rate-peak-seconds": 5, "full-check-seconds": 2,
                       "retry-seconds": 1},
            "drives": [{"name": DRIVE, "target": "online", "mount-path": str(self.mount), "layout": "btrfs",
                        "initial-size-gib": FIRST_GIB, "max-bsu-count": 8, "max-total-size-gib": 64,
                        "max-used-space-perc": MAX_PERC, "min-used-space-perc": MIN_PERC,
                        "disk-scale-factor-perc": 100}],
        }))
        if "rate-peak-seconds" not in (code / "bsud" / "config" / "schema.py").read_text().replace("_", "-"):
            doc = json.loads(self.config.read_text())  # the original has no such setting: its quiet is a minute
            del doc["daemon"]["rate-peak-seconds"]
            self.config.write_text(json.dumps(doc))
        self.run = Run(label)
        self.sizes: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None
        self.stop_sampling = threading.Event()
        self.counters = Counters(self.state)

    def drive(self) -> dict:
        try:
            return json.loads(self.status.read_text())["drives"][DRIVE]
        except (OSError, ValueError, KeyError):
            return {}

    def sample(self) -> None:
        while not self.stop_sampling.is_set():
            st = self.drive()
            if st:
                self.run.samples.append((time.time(), st.get("size_gib", 0), st.get("used_bytes") or 0))
                for v in st.get("volumes", []):
                    self.sizes[v["id"]] = v["size_gib"]
            self.stop_sampling.wait(0.5)

    def settled(self, timeout: float, check=lambda st: True) -> dict:
        deadline = time.monotonic() + timeout
        st: dict = {}
        while time.monotonic() < deadline:
            st = self.drive()
            if st.get("action") == "Idle" and all(v.get("member") for v in st.get("volumes", [])) and check(st):
                return st
            time.sleep(0.3)
        return st

    def write(self, prefix: str, gib: float) -> list[Path]:
        files, started = [], time.time()
        for i in range(max(1, round(gib * 1024 / self.args.file_mib))):
            path = self.mount / f"{prefix}{i:03d}.bin"
            w = Writer(path, None, self.args.file_mib * MIB)
            w.run()
            self.run.enospc |= w.enospc
            files.append(path)
            if w.enospc:
                break
        subprocess.run(["sync"], check=False)
        self.run.busy.append((started, time.time()))
        return files

    def burst(self, prefix: str, gib: float) -> list[Path]:
        before = self.drive().get("size_gib", 0)
        peak = [0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], self.drive().get("used_bytes") or 0)
                stop.wait(0.1)
        t = threading.Thread(target=watch, daemon=True)
        t.start()
        files = self.write(prefix, gib)
        after = self.settled(60).get("size_gib", 0)
        stop.set()
        t.join()
        self.run.bursts.append((before, after, peak[0]))
        return files

    def delete(self, files: list[Path]) -> None:
        started = time.time()
        for path in files:
            path.unlink(missing_ok=True)
        subprocess.run(["btrfs", "filesystem", "sync", str(self.mount)], check=False)
        self.run.busy.append((started, time.time()))

    def go(self) -> Run:
        a = self.args
        out = open(self.log, "a")  # noqa: SIM115
        env = {**os.environ, "BSUD_LOG": "info", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(self.code)}
        self.proc = subprocess.Popen([sys.executable, "-m", "bsud", "-c", str(self.config)], cwd=self.code,
                                     stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            if not self.settled(120).get("mounted"):
                raise RuntimeError(f"drive not online; see {self.log}")
            sampler = threading.Thread(target=self.sample, daemon=True)
            sampler.start()
            self.counters.start()
            files = self.burst("a", a.burst_gib)
            self.run.marks["burst 1"] = self.drive().get("size_gib", 0)
            keep = int(a.keep_gib * 1024 / a.file_mib)
            kept = files[::2][:keep] if keep <= len(files[::2]) else files[:keep]
            self.delete([f for f in files if f not in kept])
            time.sleep(a.quiet_seconds)
            self.run.marks["quiet"] = self.drive().get("size_gib", 0)
            files2 = self.burst("b", a.burst2_gib)
            self.run.marks["burst 2"] = self.drive().get("size_gib", 0)
            self.delete(files2)
            time.sleep(a.quiet_seconds)
            self.run.marks["end"] = self.drive().get("size_gib", 0)
            self.stop_sampling.set()
            sampler.join()
            self.counters.stop()
            for r in removals(self.log):
                if r["live"] is None or r["end"] is None:
                    continue
                overlapped = any(a < r["end"] and b > r["start"] for a, b in self.run.busy)
                self.run.moves.append((r["volume"], self.sizes.get(r["volume"], 0), r["live"],
                                       self.counters.written(r["start"], r["end"], r["volume"]), overlapped))
            self.run.creates = creates(self.log)
        finally:
            self.destroy()
        return self.run

    def destroy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(self.code)}
        subprocess.run([sys.executable, "-m", "bsud", "delete-drive", "--yes", "-c", str(self.config), "--all"],
                       cwd=self.code, capture_output=True, timeout=600, env=env)
        kept = self.dir.parent / "logs" / f"{self.dir.name}.log"
        kept.parent.mkdir(exist_ok=True)
        subprocess.run(["cp", str(self.log), str(kept)], check=False)
        self.run.log = kept
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


def original_checkout(base: Path) -> Path:
    """The code of this branch's merge base with main, unpacked (nothing of the checkout is touched)."""
    base_commit = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True,
                                 text=True, check=True).stdout.strip()
    target = base / f"bsud-{base_commit[:10]}"
    if not (target / "bsud").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", base_commit, "bsud"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def table(runs: list[Run], args: argparse.Namespace) -> str:
    new = runs[0]
    ideal_end = max(FIRST_GIB, math.ceil(args.keep_gib / (MIDDLE / 100)))
    hours = {r.label: r.gib_hours(r.provisioned()) for r in runs}
    rows = ["| drive | after burst 1 | after the quiet | after burst 2 | GiB at the end | GiB·h over the run | "
            "× ideal GiB·h | ENOSPC |", "|---|---|---|---|---|---|---|---|"]
    ideal_h = new.gib_hours(new.ideal())

    def row(label: str, marks: list, end: float, gh: float, enospc: str) -> str:
        return (f"| {label} | {' | '.join(str(m) for m in marks)} | {end:g} | {gh:.3f} | {gh / ideal_h:.1f} | "
                f"{enospc} |")
    for r in runs:
        rows.append(row(r.label, [r.marks.get(k, "-") for k in ("burst 1", "quiet", "burst 2")], r.marks.get("end", 0),
                        hours[r.label], "yes" if r.enospc else "no"))
    ns = new.never_shrink()
    top = ns[-1][1] if ns else 0
    rows.append(row("never shrink (the same grows, nothing removed)",
                    [new.marks.get("burst 1", "-"), new.marks.get("burst 1", "-"), top], top, new.gib_hours(ns), "-"))
    rows.append(row("ideal (data at the middle, ≥ 1 GiB)", ["-", ideal_end, "-"], ideal_end, ideal_h, "-"))
    out = ["\n".join(rows), ""]
    out.append("| drive | burst | GiB before | GiB after | peak data GiB | needed (peak at 75 %) | added / needed |")
    out.append("|---|---|---|---|---|---|---|")
    for r in runs:
        for i, (before, after, peak) in enumerate(r.bursts, 1):
            need = max(0, math.ceil(peak / (MAX_PERC / 100) / GIB) - before)
            ratio = f"{(after - before) / need:.2f}" if need else ("-" if after == before else "∞")
            out.append(f"| {r.label} | {i} | {before} | {after} | {peak / GIB:.2f} | +{need} | "
                       f"+{after - before} / +{need} = {ratio} |")
    out.append("")
    out.append("| drive | removal | volume GiB | live data MiB | written to the others MiB | × live |")
    out.append("|---|---|---|---|---|---|")
    for r in runs:
        for vid, size, live, written, overlapped in r.moves:
            # The counters see every write to the devices that stay: the bench's own (a delete commits metadata; a
            # file deleted while its chunk is relocated was live when the removal was planned) make such a removal's
            # figure no measure of what it moved.
            ratio = ("- (the bench wrote or deleted meanwhile)" if overlapped else
                     f"{written / live:.2f}" if live else "-")
            out.append(f"| {r.label} | {vid} | {size} | {live / MIB:.0f} | {written / MIB:.0f} | {ratio} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst-gib", type=float, default=3.0)
    parser.add_argument("--keep-gib", type=float, default=0.7)
    parser.add_argument("--burst2-gib", type=float, default=2.0)
    parser.add_argument("--file-mib", type=int, default=100)
    parser.add_argument("--quiet-seconds", type=float, default=60.0)
    parser.add_argument("--no-original", action="store_true", help="skip the run of the bsud before issue 21")
    parser.add_argument("--dir", default="/var/tmp/bsud-bench")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/cost.py: run as root (loop devices, mounts)", file=sys.stderr)
        return 2
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    runs = [Day(base, ROOT, "bsud", args).go()]
    if not args.no_original:
        runs.append(Day(base, original_checkout(base), "bsud before issue 21", args).go())
    print(f"compressed day: burst {args.burst_gib:g} GiB, deletes down to {args.keep_gib:g} GiB, quiet "
          f"{args.quiet_seconds:g} s, burst {args.burst2_gib:g} GiB, deleted, quiet {args.quiet_seconds:g} s "
          f"({time.monotonic() - started:.0f} s in all)\n")
    print(table(runs, args))
    for r in runs:
        print(f"\n{r.label} (daemon log: {r.log}): volumes created")
        for line in r.creates:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
