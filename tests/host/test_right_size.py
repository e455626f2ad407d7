"""The right size after a burst (issue 21), for real: a fast writer grows a 1 GiB drive by a rate-sized volume, the
data is deleted down to ~0.7 GiB (the original's rule only ever looked at the largest volume, which the data does
not fit without: stuck at 1 + N GiB for good), and bsud brings the drive to its ideal size — removing the volumes
by the data on them, each removal moving no more than 1.1 × the live data of the volume it takes out, measured as
the bytes written to the devices that stay (their /sys/class/block/*/stat) while it runs. Every byte kept reads
back. Local provider, btrfs layout; the quiet after a burst shortened to 5 s (rate-peak-seconds)."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import pytest

from bench.cost import Counters, removals
from bench.fill import Writer

from .daemon_harness import DaemonHarness

pytestmark = pytest.mark.host

MIB, GIB = 1024**2, 1024**3


@pytest.fixture
def harness(workdir: Path):
    # A first grow assumed to take 20 s: the writer's first volume is rate-sized (several GiB) — issue 21's 1 + 8 GiB
    # shape — whatever this machine's disk does. max-total-size-gib leaves room for the replacement beside the
    # burst's volume: loop devices write at memory speed, and a busy machine saw a 23 GiB one (24 was then a cap the
    # 2 GiB replacement could not fit under — the drive rightly stayed at 23 GiB, with a note saying why).
    h = DaemonHarness(workdir, drive="rightsize", daemon={"rate-peak-seconds": 5, "full-check-seconds": 2,
                                                          "grow-seconds": 20},
                      **{"initial-size-gib": 1, "max-bsu-count": 5, "max-total-size-gib": 40,
                         "max-used-space-perc": 75, "min-used-space-perc": 30, "disk-scale-factor-perc": 100})
    yield h
    h.close()


#: What a removal writes to the other devices beyond the data it moves: metadata (see the assertion).
METADATA_ALLOWANCE = 4 * MIB


def kernel_log() -> list[str]:
    """The kernel's ring buffer, a line each (empty when it cannot be read)."""
    out = subprocess.run(["dmesg"], capture_output=True, text=True)
    return out.stdout.splitlines() if out.returncode == 0 else []


def original_rule_end(sizes: list[int], used: int, middle: float = (75 + 30) / 2) -> int:
    """The drive's size (GiB) where the rule before issue 21 stops: the largest volume leaves while the data fits
    under the middle without it."""
    sizes = sorted(sizes)
    while len(sizes) > 1 and used / ((sum(sizes) - sizes[-1]) * GIB) * 100 <= middle:
        sizes.pop()
    return sum(sizes)


def test_a_drive_oversized_by_a_burst_comes_back_to_its_ideal_size(harness: DaemonHarness):
    h = harness
    started = time.monotonic()
    h.start()
    h.wait_online(volumes=1)
    # Counted from here: a loaded machine's writers take long enough for bsud to right-size the drive around the
    # burst's data before the test deletes it (1 + 24 GiB holding 2.2 GiB is under min too) — that removal is judged
    # as well, once the writers' data is all on the devices (before, their own writes would count as moved).
    counters = Counters(h.state_dir)
    counters.start()
    kernel_before = len(kernel_log())
    # 300 MiB kept on the first volume, a burst as fast as the page cache takes it, 400 MiB kept on the burst's volume
    keep1 = Writer(h.mount / "keep1.bin", None, 300 * MIB, verify=True)
    keep1.run()
    burst = Writer(h.mount / "burst.bin", None, int(1.5 * GIB))
    burst.run()
    keep2 = Writer(h.mount / "keep2.bin", None, 400 * MIB, verify=True)
    keep2.run()
    assert not (keep1.enospc or burst.enospc or keep2.enospc), h.tail()
    subprocess.run(["sync"], check=True)
    on_disk = time.time()
    grown = h.wait_for("the burst's volume in the drive",
                       lambda st: len(st.get("volumes", [])) >= 2 and st.get("action") == "Idle" and
                       all(v.get("member") for v in st["volumes"]), timeout=60)
    sizes_after_burst = sorted(v["size_gib"] for v in grown["volumes"])
    # the burst's volume is rate-sized: its size follows the rate this machine's writer reached (a CPU-starved CI saw
    # 3 GiB); what the test needs is a drive the original's rule leaves oversized (asserted below)
    assert sizes_after_burst[0] == 1 and len(sizes_after_burst) >= 2, sizes_after_burst

    deleting = time.time()
    (h.mount / "burst.bin").unlink()
    subprocess.run(["btrfs", "filesystem", "sync", str(h.mount)], check=True)
    deleted = time.time()

    used = (keep1.written + keep2.written)
    ideal = math.ceil(used / ((75 + 30) / 2 - 5) * 100 / GIB)
    # the original's rule only looked at the largest volume, removed while the data fits under the middle without
    # it: it stops oversized (1 + N GiB: at once; more volumes, as a loaded machine's burst may make: a little later)
    assert original_rule_end(sizes_after_burst, used) > ideal, sizes_after_burst

    def settled(st: dict) -> bool:
        return st.get("action") == "Idle" and all(v.get("member") for v in st.get("volumes", [])) and \
            st.get("size_gib", 99) <= ideal + 1
    final = h.wait_for(f"the drive back to at most {ideal + 1} GiB", settled, timeout=120)
    counters.stop()

    # A removal that ran while the test deleted the burst is not judged: the delete's commit writes to the devices
    # that stay, and the burst's extents counted live when the removal was planned may be freed before or after
    # their chunk is relocated (bench/cost.py, whose deletes race such a removal: 0.60 × in one run, 1.65 × in another).
    started_after = [r for r in removals(h.log_path) if r["start"] >= on_disk]
    done = [r for r in started_after if r["end"] is None or not (r["start"] < deleted and r["end"] > deleting)]
    assert done, h.tail()
    lines = [f"not judged (ran while the test deleted the burst): {r['volume']}" for r in started_after
             if r not in done]
    for r in done:
        assert r["live"] is not None and r["end"] is not None, r
        moved = counters.written(r["start"], r["end"], r["volume"])
        lines.append(f"removed {r['volume']}: live {r['live'] / MIB:.0f} MiB, written to the others "
                     f"{moved / MIB:.0f} MiB ({moved / max(r['live'], 1):.2f}×) in {r['end'] - r['start']:.1f} s")
        # + 4 MiB: taking a device out writes metadata whatever it holds (the chunk and device trees, the
        # superblocks: ~330 KiB measured for a volume that held nothing, which a loaded machine's burst can leave).
        # Failing, it shows what the kernel relocated meanwhile (a block group moved twice, an ENOSPC, a retry).
        assert moved <= 1.1 * r["live"] + METADATA_ALLOWANCE, \
            "\n".join([lines[-1], "the kernel's btrfs lines since the drive came online:",
                       *[line for line in kernel_log()[kernel_before:] if "BTRFS" in line][-60:], h.tail()])
    print(f"\nafter the burst: {'+'.join(map(str, sizes_after_burst))} GiB; data kept {used / MIB:.0f} MiB; "
          f"ideal {ideal} GiB; now {'+'.join(str(v['size_gib']) for v in final['volumes'])} GiB, used "
          f"{final['used_percent']:.1f}%; {time.monotonic() - started:.0f} s in all")
    print("\n".join(lines))
    assert final["used_percent"] > 30 or final["size_gib"] <= ideal
    assert keep1.check() == [] and keep2.check() == []     # not a byte lost
    assert h.stop() == 0
