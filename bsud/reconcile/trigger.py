"""When a drive needs space now, and how big a volume sized for its writer is. Pure.

The daemon's sampler asks :func:`scale_up_reason` several times a second; the planner asks it once per plan (in
:func:`bsud.reconcile.scaling.scale_decision`). :func:`time_to_full` is also what the status shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bsud.config import DriveConfig
from bsud.naming import GIB
from bsud.reconcile.model import Pace, UsageObs

#: Data space never counted on: btrfs refuses writes a little before its data pool is full.
FULL_MARGIN_BYTES = 64 * 1024**2


def full_margin(usage: UsageObs) -> int:
    """Data space btrfs cannot be relied on to hand out (it refuses writes a little before the end)."""
    return max(FULL_MARGIN_BYTES, (usage.used + usage.free) // 100)


def seconds_to_full(usage: UsageObs, rate: float) -> float:
    """Seconds until writes fail at ``rate`` bytes/s (infinite when nothing is written)."""
    if rate <= 0:
        return math.inf
    return max(0, usage.free - full_margin(usage)) / rate


def rate_text(rate: float) -> str:
    return f"{rate / 1e6:.1f} MB/s"


def writeback_assumed(pace: Pace) -> float:
    """The devices' writeback rate the intake counts on: measured (while writeback was saturated, so it is what they
    can do), else a ``safety_factor``-th of the present rate. That guess keeps the trigger safe whatever the devices
    do: it fires once the cache's room plus one grow time at the present rate is all that is left, so the writer —
    held to the devices' pace past the cache, or at its own when they are faster — needs at least one grow time
    (plus the cache's room at its rate) to fill the drive."""
    if pace.writeback_rate > 0:
        return pace.writeback_rate
    return pace.write_rate / max(pace.safety_factor, 1.0)


def intake(pace: Pace, seconds: float) -> float:
    """The most the writer can add to the drive in ``seconds``: its present rate, but never more than the page
    cache's dirty room plus what the devices write back meanwhile (past the dirty limit the kernel holds writers to
    the devices' pace). The present rate alone while the kernel's figures are not known."""
    plain = pace.write_rate * seconds
    if pace.dirty_room is None:
        return plain
    return min(plain, pace.dirty_room + writeback_assumed(pace) * seconds)


def time_to_full(usage: UsageObs, pace: Pace) -> float:
    """Seconds until writes fail, by :func:`intake`: a burst at memory speed fills the page cache's room, then goes
    on at the devices' writeback rate (see :func:`writeback_assumed`)."""
    rate = pace.write_rate
    if rate <= 0:
        return math.inf
    room = max(0, usage.free - full_margin(usage))
    cached = room / rate
    if pace.dirty_room is None or room <= pace.dirty_room:
        return cached
    return max(cached, (room - pace.dirty_room) / writeback_assumed(pace))


def _writeback_text(pace: Pace) -> str:
    if pace.writeback_rate > 0:
        return f"{rate_text(pace.writeback_rate)} written back"
    return (f"{rate_text(writeback_assumed(pace))} written back (1/{pace.safety_factor:g} of the present rate: the "
            "devices have not been seen saturated yet)")


def _full_text(usage: UsageObs, pace: Pace, left: float) -> str:
    room = max(0, usage.free - full_margin(usage))
    if pace.write_rate > 0 and left > room / pace.write_rate * 1.001:
        return (f"full in {left:.1f} s ({rate_text(pace.write_rate)} now; at most {(pace.dirty_room or 0) / GIB:.1f} "
                f"GiB more in the page cache, then {_writeback_text(pace)})")
    return f"full in {left:.1f} s at {rate_text(pace.write_rate)}"


def scale_up_reason(spec: DriveConfig, usage: UsageObs, pace: Pace) -> str | None:
    """Why the drive needs more space now, or None. Pure; the daemon's sampler asks it several times a second.

    - used % at or over ``max-used-space-perc`` (the classic rule);
    - metadata at or over it: btrfs returns ENOSPC when metadata runs out, whatever data space is free;
    - the drive would be full, at the present write rate, sooner than ``safety_factor`` grow times — even
      far below the threshold: a grow has to finish before the writer reaches the end. A rate the page cache
      takes at memory speed counts only up to the cache's room, then the devices' writeback rate
      (:func:`time_to_full`).
    """
    pct = usage.used_percent
    if pct >= spec.max_used_space_perc:
        return f"used {pct:.1f}% >= {spec.max_used_space_perc}%"
    meta = usage.metadata_percent
    if meta >= spec.max_used_space_perc:
        return f"metadata used {meta:.1f}% >= {spec.max_used_space_perc}% (btrfs refuses writes when it runs out)"
    left = time_to_full(usage, pace)
    horizon = pace.safety_factor * pace.grow_seconds
    if left < horizon:
        return (f"{_full_text(usage, pace, left)} (used {pct:.1f}%), sooner than "
                f"{pace.safety_factor:g} grow times (a grow takes ~{pace.grow_seconds:.1f} s)")
    return None


@dataclass(frozen=True)
class RateSize:
    """What a volume sized for the writer must hold, and why (in words, for the step's log line)."""

    bytes: int
    why: str

    @property
    def gib(self) -> int:
        return math.ceil(self.bytes / GIB) if self.bytes > 0 else 0


def rate_sized(pace: Pace, usage: UsageObs | None = None) -> RateSize:
    """A volume that holds safety_factor + 1 grow times of what the writer can write: the next grow is then due no
    sooner than safety_factor grow times after this one is usable. (The trigger fired with safety_factor grow times
    of room left; one of them goes by while the volume comes; the volume brings safety_factor + 1 more: room for
    2 × safety_factor − 1 grow times when it is usable, the next trigger safety_factor of them later.) Not more: a
    burst stops without warning, and what a longer horizon buys is capacity the burst never used (issue 21: 6 grow
    times made a 3 GiB burst add 8 GiB where 4 were needed).

    What the writer can write in ``T`` seconds is bounded twice: by its present rate (``rate × T``) and by what the
    drive can take — the page cache absorbs writes at memory speed only up to the kernel's dirty limit, after which
    the writer is held to the pace the devices write back at (``dirty room + writeback rate × T``). A first second at
    memory speed is not a rate anyone keeps up. When the kernel's figures are not known, the present rate alone.

    Never less than what makes the *next* grow safe if it has to start as soon as this one is done: two grow
    times at the present rate, less the free space there is. That floor holds whatever the devices can do (their
    rate may not have been seen yet: writeback starts only once the cache holds enough), so an underestimated
    writeback rate costs a sooner grow, never a full drive.
    """
    rate, grow = pace.write_rate, pace.grow_seconds
    if rate <= 0:
        return RateSize(0, "")
    horizon = (pace.safety_factor + 1) * grow
    plain = rate * horizon
    grows = f"{pace.safety_factor + 1:g} grows of ~{grow:.1f} s"
    if pace.dirty_room is None:
        return RateSize(int(plain), f"at {rate_text(rate)} it must hold {grows}")
    takes = intake(pace, horizon)
    if plain <= takes:
        return RateSize(int(plain), f"at {rate_text(rate)} it must hold {grows}")
    free = max(0, usage.free - full_margin(usage)) if usage is not None else 0
    floor = 2 * grow * rate - free
    how = (f"{grows} at {rate_text(rate)} would be {plain / GIB:.1f} GiB, but the drive takes at most "
           f"{takes / GIB:.1f} GiB in that time ({pace.dirty_room / GIB:.1f} GiB more in the page cache, then "
           f"{_writeback_text(pace)} to its devices)")
    if floor > takes:
        return RateSize(int(floor), f"{how}; at least 2 grows at {rate_text(rate)} less the "
                                    f"{free / GIB:.1f} GiB free, in case the devices are faster than seen yet")
    return RateSize(int(takes), how)
