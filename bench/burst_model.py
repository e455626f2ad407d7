"""A desk model of a burst against bsud's scale-up rules: does the drive fill, and what does it provision?

    .venv/bin/python bench/burst_model.py        # ~1 min, no root, no devices

Pure arithmetic in 50 ms steps: a writer (its rate until the page cache holds the dirty limit, then the devices'
rate), the kernel's flusher (from the background threshold, half the limit, at the devices' rate), bsud's sampler
every 0.25 s feeding the same meters the daemon has (``RateMeter``, ``WritebackMeter``) and asking the planner's own
``scale_up_reason`` / ``scale_decision``, a grow taking 95 % of the grow time bsud assumes. Each combination of first
volume, writer rate, device rate, page cache size and grow time runs twice: with the kernel's figures (this
checkout's rules) and without them (``dirty_room`` None: the rules before issue 21, the rate alone). Printed: the
cases that got ENOSPC under each, and the capacity provisioned, new against old. A model, not a measurement: the
host's figures are bench/fill.py's and bench/cost.py's.
"""

from __future__ import annotations

import itertools
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bsud.config import DriveConfig, Layout, Target  # noqa: E402
from bsud.reconcile.model import GIB, Pace, UsageObs, VolumeObs  # noqa: E402
from bsud.reconcile.pace import RateMeter, WritebackMeter  # noqa: E402
from bsud.reconcile.scaling import scale_decision, scale_up_reason  # noqa: E402

STEP, SAMPLE, MARGIN = 0.05, 0.25, 64 * 2**20


def run(burst: float, rate: float, devices: float, cache: float, grow: float, first: int,
        kernel: bool = True) -> tuple[list[int], bool]:
    """Volumes (GiB) at the end and whether the writer got ENOSPC, for a burst of ``burst`` bytes."""
    spec = DriveConfig(name="d", target=Target.ONLINE, mount_path="/m", layout=Layout.BTRFS, initial_size_gib=first,
                       max_bsu_count=10, max_used_space_perc=75, min_used_space_perc=30, disk_scale_factor_perc=100)
    vols, capacity = [first], first * GIB * 0.97   # btrfs keeps ~3 % for metadata
    used = dirty = written = t = next_sample = 0.0
    meter, wb = RateMeter(), WritebackMeter()
    done_at: float | None = None
    pending = 0
    while t < 120 and (used < burst or done_at is not None):
        if used < burst:
            step = min(rate * STEP if dirty < cache else devices * STEP, burst - used)
            if used + step > capacity - MARGIN:
                return vols, True
            used, dirty = used + step, dirty + step
        if dirty > cache / 2 or used >= burst:
            out = min(dirty, devices * STEP)
            dirty, written = dirty - out, written + out
        if done_at is not None and t >= done_at:
            vols.append(pending)
            capacity += pending * GIB
            done_at = None
        if t >= next_sample:
            next_sample += SAMPLE
            meter.add(t, int(used))
            wb.add(t, {"dev": int(written)}, saturated=dirty >= cache / 2)
            pace = Pace(write_rate=meter.rate(), recent_peak=meter.peak(), grow_seconds=grow, safety_factor=3.0,
                        writeback_rate=wb.rate(), dirty_room=int(max(0.0, cache - dirty)) if kernel else None)
            usage = UsageObs(used=int(used), free=int(capacity - used), size=int(capacity))
            if done_at is None and scale_up_reason(spec, usage, pace):
                members = [VolumeObs(id=f"v{i}", size_gib=s, state="in-use", member=True) for i, s in enumerate(vols)]
                action, _ = scale_decision(spec, members, usage, 14901, pace)
                if action is not None and action.kind == "CreateVolume":
                    pending, done_at = action.size_gib, t + 0.95 * grow
        t += STEP
    return vols, False


def main() -> int:
    grid = list(itertools.product((1, 4, 10, 40), (0.2e9, 0.6e9, 1.4e9), (0.1e9, 0.3e9, 1.0e9, 2e9),
                                  (0.3e9, 3.3e9), (2.0, 5.0, 20.0)))
    rows = []
    for first, rate, devices, cache, grow in grid:
        burst = 3 * first * GIB
        new, old = run(burst, rate, devices, cache, grow, first), run(burst, rate, devices, cache, grow, first, False)
        rows.append(((first, rate, devices, cache, grow), new, old))
    full_new = [k for k, n, _ in rows if n[1]]
    full_old = [k for k, _, o in rows if o[1]]
    print(f"{len(rows)} bursts of 3 × the first volume: ENOSPC with the kernel's figures {len(full_new)}, with the "
          f"rate alone (before issue 21) {len(full_old)}; the same cases: {set(full_new) == set(full_old)}")
    later = [k for k, n, o in rows if (n[1] and len(n[0]) > 1) or (o[1] and len(o[0]) > 1)]
    print(f"  of which after a grow had completed: {len(later)} (the others: the first volume full before the first "
          "grow could finish — no rule helps)")
    for k in sorted(set(full_new) | set(full_old)):
        first, rate, devices, cache, grow = k
        print(f"  ENOSPC {'new' if k in full_new else '   '} {'old' if k in full_old else '   '}: first {first} GiB, "
              f"writer {rate / 1e6:.0f} MB/s, devices {devices / 1e6:.0f} MB/s, cache {cache / 1e9:.1f} GB, "
              f"grow {grow:g} s")
    ratios = [sum(n[0]) / sum(o[0]) for _, n, o in rows if not n[1] and not o[1]]
    print(f"capacity provisioned, new / old: median {statistics.median(ratios):.2f}, lowest {min(ratios):.2f}, "
          f"highest {max(ratios):.2f} (over {len(ratios)} bursts both survived)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
