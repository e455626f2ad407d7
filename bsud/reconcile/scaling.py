"""Scaling rules: when a drive needs space, how big the next volume is, and when a volume may leave. Pure.

The rules follow the original bsud with its defects corrected; see the planner's docstring. The daemon's sampler
asks :func:`scale_up_reason` several times a second, the planner the rest after each observation.
"""

from __future__ import annotations

import math
from dataclasses import replace

from bsud.config import DriveConfig
from bsud.naming import GIB, REMOVING
from bsud.reconcile.model import Action, CreateVolume, MarkVolume, Pace, UsageObs, VolumeObs

#: Percentage points kept between an "ideal" volume's expected fill and the middle threshold.
IDEAL_MARGIN = 5.0
#: Data space never counted on: btrfs refuses writes a little before its data pool is full.
FULL_MARGIN_BYTES = 64 * 1024**2
#: No scale-down while the drive would be full within this long at its recent write rate…
QUIET_SECONDS = 3600.0
#: …nor when the drive after the removal would pass max-used-space-perc within this many grow times.
QUIET_GROW_TIMES = 10


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


def scale_up_reason(spec: DriveConfig, usage: UsageObs, pace: Pace) -> str | None:
    """Why the drive needs more space now, or None. Pure; the daemon's sampler asks it several times a second.

    - used % at or over ``max-used-space-perc`` (the classic rule);
    - metadata at or over it: btrfs returns ENOSPC when metadata runs out, whatever data space is free;
    - the drive would be full, at the present write rate, sooner than ``safety_factor`` grow times — even
      far below the threshold: a grow has to finish before the writer reaches the end.
    """
    pct = usage.used_percent
    if pct >= spec.max_used_space_perc:
        return f"used {pct:.1f}% >= {spec.max_used_space_perc}%"
    meta = usage.metadata_percent
    if meta >= spec.max_used_space_perc:
        return f"metadata used {meta:.1f}% >= {spec.max_used_space_perc}% (btrfs refuses writes when it runs out)"
    left = seconds_to_full(usage, pace.write_rate)
    horizon = pace.safety_factor * pace.grow_seconds
    if left < horizon:
        return (f"full in {left:.1f} s at {rate_text(pace.write_rate)} (used {pct:.1f}%), sooner than "
                f"{pace.safety_factor:g} grow times (a grow takes ~{pace.grow_seconds:.1f} s)")
    return None


def rate_sized_gib(pace: Pace) -> int:
    """A volume that holds 2 × safety_factor grow times of writing at the present rate: the next grow is
    then due no sooner than safety_factor grow times after this one is usable."""
    need = pace.write_rate * pace.grow_seconds * 2 * pace.safety_factor
    return math.ceil(need / GIB) if need > 0 else 0


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
    middle = middle_percent(spec)
    smallest = min(members, key=lambda v: (v.size_gib, v.id))
    largest = max(members, key=lambda v: (v.size_gib, v.id))
    up = scale_up_reason(spec, usage, pace)

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
        burst = rate_sized_gib(pace)
        if burst > size:
            why = (f"{up}: adding a volume of {{size}} GiB rather than the {kind} {size} GiB: at "
                   f"{rate_text(pace.write_rate)} it must hold {2 * pace.safety_factor:g} grows of "
                   f"~{pace.grow_seconds:.1f} s")
            size = min(max_volume_gib, burst)
        size = int(min(size, room))
        return CreateVolume(size_gib=size, reason=why.format(size=size)), None

    if pct <= spec.min_used_space_perc:
        if count > 1:
            after = used_percent_without(usage, largest.size_bytes)
            if after <= middle:
                burst = burst_blocks_removal(spec, usage, pace, largest.size_bytes)
                if burst:
                    return None, burst
                return MarkVolume(volume_id=largest.id, value=REMOVING,
                                  reason=f"used {pct:.1f}% <= {spec.min_used_space_perc}%: removing the largest "
                                         f"volume ({largest.size_gib} GiB), used will be {after:.1f}%"), None
            return None, None
        if total <= spec.initial_size_gib:
            return None, None
        ideal_gib = math.ceil(ideal_bytes(spec, usage) / GIB)
        if ideal_gib < total and count < spec.max_bsu_count:
            burst = burst_blocks_removal(spec, usage, pace, largest.size_bytes - ideal_gib * GIB)
            if burst:
                return None, burst
            return CreateVolume(size_gib=ideal_gib,
                                reason=f"used {pct:.1f}% <= {spec.min_used_space_perc}% on one volume: adding an "
                                       f"ideal {ideal_gib} GiB volume to move the data onto"), None
    return None, None


def grown_gib(size_gib: int, factor_perc: int) -> int:
    """``size × (1 + factor)`` rounded up, in integers (floating point made 100 GiB × 1.1 into 111)."""
    return size_gib + -(-size_gib * factor_perc // 100)


def _left_text(usage: UsageObs, pace: Pace) -> str:
    left = seconds_to_full(usage, pace.write_rate)
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
