"""The daemon's idle cost: CPU, RSS and threads of a daemon whose drives are online and nothing writes to them.

Run by ``bench/fill.py`` after its table, or alone with ``bench/fill.py --idle-only`` (as root): one drive, then
ten drives of 1 GiB in one daemon (local provider, loop devices, btrfs), each measured over ``--idle-seconds``
from ``/proc/<pid>/stat`` — the daemon's own user + system time, and apart from it the time of the commands its
full checks run (``btrfs filesystem show``…), counted once they exited. Targets: ten drives ≤ 1 % of a core
together, RSS ≤ 60 MB.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.fill import Drive


def idle_cost(base: Path, seconds: float, drives: int = 1) -> str:
    """CPU % of one core (user + system, from /proc/<pid>/stat over ``seconds``; its commands' apart), RSS and threads
    of a daemon whose ``drives`` drives are online and idle."""
    drive = Drive(base, 1, drives)
    try:
        drive.start()
        drive.wait_online()
        time.sleep(3)
        assert drive.proc is not None
        stat = Path(f"/proc/{drive.proc.pid}/stat")
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> tuple[float, float]:
            """The daemon's own CPU seconds (utime + stime), and its commands' (cutime + cstime: the full checks'
            btrfs, blkid… once they exited)."""
            fields = stat.read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks, (int(fields[13]) + int(fields[14])) / ticks

        (c0, k0), t0 = cpu(), time.monotonic()
        time.sleep(seconds)
        (c1, k1), t1 = cpu(), time.monotonic()
        status = Path(f"/proc/{drive.proc.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        threads = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:"))
        what = "one drive" if drives == 1 else f"{drives} drives"
        return (f"idle daemon, {what} online, {seconds:.0f} s: CPU {100 * (c1 - c0) / (t1 - t0):.2f} % of a "
                f"core (+ {100 * (k1 - k0) / (t1 - t0):.2f} % in the commands of its full checks), RSS "
                f"{rss / 1024:.1f} MiB, {threads} threads (targets: ten drives ≤ 1 % together, ≤ 60 MB)")
    finally:
        drive.destroy()
