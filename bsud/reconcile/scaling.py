"""Scaling rules: when a drive needs space, how big the next volume is, and when a volume may leave. Pure.

The rules follow the original bsud with its defects corrected; see the planner's docstring. The daemon's sampler
asks :func:`scale_up_reason` several times a second, the planner the rest after each observation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from bsud.config import DriveConfig
from bsud.naming import GIB, REMOVING
from bsud.reconcile.model import Action, CreateVolume, MarkVolume, Pace, UsageObs, VolumeObs

MIB = 1024**2

#: Percentage points kept between an "ideal" volume's expected fill and the middle threshold.
IDEAL_MARGIN = 5.0
#: Data space never counted on: btrfs refuses writes a little before its data pool is full.
FULL_MARGIN_BYTES = 64 * 1024**2
#: No scale-down while the drive would be full within this long at its recent write rate…
QUIET_SECONDS = 3600.0
#: …nor when the drive after the removal would pass max-used-space-perc within this many grow times.
QUIET_GROW_TIMES = 10
#: A volume is added to move data onto (a replacement) only when the drive ends up at most this fraction of its
#: size: moving a volume's data is worth halving the drive, not shaving a few GiB off it (a classic scale-up that
#: lands just under min-used-space-perc is left alone, as the original's hysteresis did).
REPLACE_AT_MOST = 0.5


def middle_percent(spec: DriveConfig) -> float:
    return (spec.min_used_space_perc + spec.max_used_space_perc) / 2.0


def ideal_bytes(spec: DriveConfig, usage: UsageObs) -> int:
    """Capacity at which the drive's data would fill it to a little under the middle threshold."""
    target = max(middle_percent(spec) - IDEAL_MARGIN, 1.0) / 100.0
    return max(math.ceil(usage.used / target), spec.initial_size_gib * GIB)


def used_percent_without(usage: UsageObs, removed_bytes: int) -> float:
    """Used % once ``removed_bytes`` of capacity are gone (100+ when the data would not fit)."""
    remaining = usage.used + usage.free - removed_bytes
    if remaining <= usage.used:
        return math.inf
    return 100.0 * usage.used / remaining


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


def burst_blocks_removal(spec: DriveConfig, usage: UsageObs, pace: Pace, removed_bytes: int) -> str | None:
    """Why no volume may leave the drive now because of writes, or None.

    No scale-down while the drive is being written fast (it would be full within ``QUIET_SECONDS`` at the
    highest rate of the last minute), nor one whose capacity after removal would reach
    ``max-used-space-perc`` within ``QUIET_GROW_TIMES`` grow times at that rate.
    """
    rate = max(pace.write_rate, pace.recent_peak)
    if rate <= 0:
        return None
    left = seconds_to_full(usage, rate)
    if left < QUIET_SECONDS:
        return f"no scale-down while written at {rate_text(rate)} (full in {left:.0f} s at that rate)"
    capacity_after = usage.used + usage.free - removed_bytes
    room = capacity_after * spec.max_used_space_perc / 100 - usage.used
    horizon = QUIET_GROW_TIMES * pace.grow_seconds
    if room / rate < horizon:
        return (f"no scale-down: at {rate_text(rate)} the drive would pass {spec.max_used_space_perc}% within "
                f"{room / rate:.0f} s of the removal ({QUIET_GROW_TIMES} grow times is {horizon:.0f} s)")
    return None


def scale_decision(spec: DriveConfig, members: list[VolumeObs], usage: UsageObs,
                   max_volume_gib: int, pace: Pace = Pace()) -> tuple[Action | None, str | None]:
    """Scale up, down, or nothing, for a mounted drive whose volumes are all members. Pure.

    Returns the action (or None) and a note explaining why nothing is done when a limit stops it.
    """
    count = len(members)
    sizes = [v.size_gib for v in members]
    total = sum(sizes)
    pct = usage.used_percent
    smallest = min(members, key=lambda v: (v.size_gib, v.id))
    up = scale_up_reason(spec, usage, pace)

    if up is None and pct <= spec.min_used_space_perc:
        action, note = shrink_decision(spec, members, usage, max_volume_gib, pace)
        if action is not None or count < spec.max_bsu_count:
            return action, note

    if count > 1 and count >= spec.max_bsu_count:
        after = used_percent_without(usage, smallest.size_bytes)
        burst = burst_blocks_removal(spec, usage, pace, smallest.size_bytes)
        if after < spec.max_used_space_perc and burst is None:
            return MarkVolume(volume_id=smallest.id, value=REMOVING,
                              reason=f"{count} volumes reach max-bsu-count {spec.max_bsu_count}: replacing the "
                                     f"smallest ({smallest.size_gib} GiB) keeps a slot free "
                                     f"(used {pct:.1f}% → {after:.1f}%)"), None
        if up:
            return None, (f"{up}, but {count} volumes is max-bsu-count and "
                          + (burst or "the data would not fit without the smallest")
                          + f"; raise max-bsu-count or free space{_left_text(usage, pace)}")

    if up:
        if count >= spec.max_bsu_count:
            return None, f"{up}, but max-bsu-count ({spec.max_bsu_count}) is reached{_left_text(usage, pace)}"
        room = math.inf if spec.max_total_size_gib is None else spec.max_total_size_gib - total
        if room < 1:
            return None, (f"{up}, but max-total-size-gib ({spec.max_total_size_gib}) is reached"
                          f"{_left_text(usage, pace)}")
        if count < spec.max_bsu_count - 1 and min(sizes) > spec.initial_size_gib:
            size = max(spec.initial_size_gib, min(sizes) - min(sizes) * spec.disk_scale_factor_perc // 100)
            kind = "smaller"
        else:
            size = min(max_volume_gib, grown_gib(max(sizes), spec.disk_scale_factor_perc))
            kind = "larger"
        why = f"{up}: adding a {kind} volume of {{size}} GiB"
        burst = rate_sized(pace, usage)
        if burst.gib > size:
            why = f"{up}: adding a volume of {{size}} GiB rather than the {kind} {size} GiB: {burst.why}"
            size = min(max_volume_gib, burst.gib)
        size = int(min(size, room))
        return CreateVolume(size_gib=size, reason=why.format(size=size)), None
    return None, None


# -- the right size after a burst -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shrink:
    """Where a drive under min-used-space-perc goes, and how: the volumes that stay, those that leave (in the order
    they leave), the one volume added to move data onto (0: none) and whether it comes before the removals, the
    bytes that have to move, and the drive's size and used % at the end."""

    keep: tuple[str, ...]
    remove: tuple[str, ...]
    add_gib: int
    add_first: bool
    moved: int
    capacity_gib: int
    used_after: float
    converged: bool

    def key(self) -> tuple[bool, int, bool, int, int]:
        """Best first: reaches the band, moves the fewest bytes, needs no new volume, smallest, fewest steps."""
        return (not self.converged, self.moved, self.add_gib > 0, self.capacity_gib, len(self.remove))

    def describe(self, sizes: dict[str, int]) -> str:
        gone = " + ".join(f"{v} ({sizes[v]} GiB)" for v in self.remove) or "nothing"
        added = f"adding a {self.add_gib} GiB volume, " if self.add_gib else ""
        return (f"{added}removing {gone}: {self.capacity_gib} GiB at the end (used {self.used_after:.1f}%), "
                f"moving {self.moved / MIB:.0f} MiB")


def _kept_sets(members: list[VolumeObs], live: dict[str, int]) -> dict[int, tuple[int, int, int]]:
    """For each capacity (GiB) a subset of ``members`` adds up to: the subset keeping the most live data (then the
    most volumes), as (live kept, volumes kept, bit mask of the members kept). Exact (a knapsack over capacities)."""
    best: dict[int, tuple[int, int, int]] = {0: (0, 0, 0)}
    for i, v in enumerate(members):
        for cap, (kept, n, mask) in list(best.items()):
            candidate = (kept + live[v.id], n + 1, mask | (1 << i))
            current = best.get(cap + v.size_gib)
            if current is None or candidate[:2] > current[:2]:
                best[cap + v.size_gib] = candidate
    return best


def shrink_options(spec: DriveConfig, members: list[VolumeObs], usage: UsageObs,
                   max_volume_gib: int) -> list[Shrink]:
    """Every drive a drive under ``min-used-space-perc`` may shrink to, best first (see :meth:`Shrink.key`). Pure.

    - Removals alone: any set of volumes to keep whose capacity keeps used at or under the middle of min and max
      (each removal on the way then does too: removals only shrink the drive), never under ``initial-size-gib``.
    - At most one replacement: the volumes kept plus one new volume that brings the drive to the ideal size
      (used / (middle − 5 %), at least ``initial-size-gib``) — only where that halves the drive (see
      ``REPLACE_AT_MOST``). It is added first when a slot and ``max-total-size-gib`` allow, else after the
      removals when those keep used under the middle.

    A way "converges" when used ends over ``min-used-space-perc`` (or the drive is at its ideal size): nothing more
    to do after it. What has to move is the live data of the volumes that leave (``VolumeObs.live_bytes``); when
    it is not known for every volume, every way counts as moving nothing and the smallest drive wins, as before.
    """
    if not members:
        return []
    total = sum(v.size_gib for v in members)
    known = all(v.live_bytes is not None for v in members)
    live = {v.id: (v.live_bytes or 0) if known else 0 for v in members}
    all_live = sum(live.values())
    data_capacity = usage.used + usage.free
    middle = middle_percent(spec)

    def used_at(capacity_gib: int) -> float:
        left = data_capacity - (total - capacity_gib) * GIB
        return math.inf if left <= usage.used else 100.0 * usage.used / left

    # The ideal size counted as the drive will be (its metadata and system chunks take their share of any size):
    # one counted on the data alone can end over the middle, where the next plan would take the new volume out again
    ideal_gib = math.ceil(ideal_bytes(spec, usage) / GIB)
    while ideal_gib < total and used_at(ideal_gib) > max(middle - IDEAL_MARGIN, 1.0):
        ideal_gib += 1

    def order(removed: list[VolumeObs]) -> tuple[str, ...]:
        # The one holding least first: btrfs moves a removed device's chunks onto the others with the most room,
        # which may be one leaving later — better the little data than the much.
        return tuple(v.id for v in sorted(removed, key=lambda v: (live[v.id], -v.size_gib, v.id)))

    options: list[Shrink] = []
    for cap, (kept, _, mask) in _kept_sets(members, live).items():
        keep = [v for i, v in enumerate(members) if mask >> i & 1]
        removed = [v for i, v in enumerate(members) if not mask >> i & 1]
        if not removed:
            continue
        after = used_at(cap)
        if cap >= spec.initial_size_gib and after <= middle:
            options.append(Shrink(
                keep=tuple(v.id for v in keep), remove=order(removed), add_gib=0, add_first=False,
                moved=all_live - kept, capacity_gib=cap, used_after=after,
                converged=after > spec.min_used_space_perc or cap <= ideal_gib))
        add = ideal_gib - cap
        if add < 1 or add > max_volume_gib or ideal_gib > total * REPLACE_AT_MOST or used_at(ideal_gib) > middle:
            continue
        slot = len(members) + 1 <= spec.max_bsu_count
        room = spec.max_total_size_gib is None or total + add <= spec.max_total_size_gib
        first = slot and room
        if not first and not (keep and after <= middle):
            continue  # no room to add it first, and the data does not fit on what stays until it comes
        options.append(Shrink(
            keep=tuple(v.id for v in keep), remove=order(removed), add_gib=add, add_first=first,
            moved=all_live - kept, capacity_gib=ideal_gib, used_after=used_at(ideal_gib), converged=True))
    return sorted(options, key=Shrink.key)


def shrink_decision(spec: DriveConfig, members: list[VolumeObs], usage: UsageObs, max_volume_gib: int,
                    pace: Pace = Pace()) -> tuple[Action | None, str | None]:
    """The next step of the best way down for a drive under ``min-used-space-perc`` (see :func:`shrink_options`),
    or None with a note saying why it stays as it is. Pure.

    The plan is made again after every step, on what the drive holds then; a step is never taken into a burst
    (:func:`burst_blocks_removal`, for the capacity the drive ends up with).
    """
    pct = usage.used_percent
    total = sum(v.size_gib for v in members)
    sizes = {v.id: v.size_gib for v in members}
    lows = f"used {pct:.1f}% <= {spec.min_used_space_perc}%"
    options = shrink_options(spec, members, usage, max_volume_gib)
    if not options:
        if total <= spec.initial_size_gib or len(members) == 1 and \
                math.ceil(ideal_bytes(spec, usage) / GIB) >= total:
            return None, None
        return None, (f"{lows}, but no smaller drive keeps used under {middle_percent(spec):g}% and at least "
                      f"initial-size-gib ({spec.initial_size_gib}), and a new volume to move the data onto "
                      f"would not halve the drive or has no room (max-bsu-count, max-total-size-gib)")
    blocked = None
    if options[0].converged:  # a way that does not get there is no fallback for one a burst holds back
        options = [o for o in options if o.converged]
    for best in options:
        burst = burst_blocks_removal(spec, usage, pace, (total - best.capacity_gib) * GIB)
        if burst is None:
            break
        blocked = blocked or burst
    else:
        return None, blocked
    known = "" if all(v.live_bytes is not None for v in members) else " (data per volume not known: by size)"
    plan = f"{best.describe(sizes)}{known}"
    if best.add_gib and best.add_first:
        return CreateVolume(size_gib=best.add_gib,
                            reason=f"{lows}: {plan}; first the new volume to move the data onto"), None
    victim = best.remove[0]
    return MarkVolume(volume_id=victim, value=REMOVING,
                      reason=f"{lows}: {plan}; now {victim}"), None


def grown_gib(size_gib: int, factor_perc: int) -> int:
    """``size × (1 + factor)`` rounded up, in integers (floating point made 100 GiB × 1.1 into 111)."""
    return size_gib + -(-size_gib * factor_perc // 100)


def _left_text(usage: UsageObs, pace: Pace) -> str:
    left = time_to_full(usage, pace)
    return "" if math.isinf(left) else f"; full in {left:.0f} s at {rate_text(pace.write_rate)}"


def removal_no_longer_fits(spec: DriveConfig, usage: UsageObs, pace: Pace, members: list[VolumeObs],
                           volume: VolumeObs) -> str | None:
    """Why a removal in progress must be abandoned (the volume stays), or None. Growth comes first.

    The drive is judged as it will be without the volume — as the sampler judged it while the removal's move ran
    (a burst pre-empts a removal), not on the capacity a cancelled move just gave back: else the removal would be
    started again into the same burst, and stopped again, and the drive would never grow."""
    capacity_after = sum(v.size_bytes for v in members) - volume.size_bytes
    # What of the filesystem goes with the volume: all of it on btrfs's own device; on lvm, none once the LV was
    # reduced to the other volumes before the pvmove, the part beyond them before. As the sampler counts it (size less
    # what is leaving), so that both see the same space.
    size = usage.size or usage.used + usage.free
    gone = min(volume.size_bytes, max(0, size - max(capacity_after, 0)))
    up = scale_up_reason(spec, replace(usage, free=max(0, usage.free - gone)), pace)
    if up:
        return f"the drive needs space ({up})"
    after = 100.0 * usage.used / capacity_after if capacity_after > 0 else math.inf
    if after >= spec.max_used_space_perc:
        return f"the data would fill {after:.1f}% of the drive without it"
    return None
