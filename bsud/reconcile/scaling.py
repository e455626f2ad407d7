"""Scaling rules: scale up, down, or neither, for a mounted drive — one :class:`ScaleDecision`, made once. Pure.

The rules follow the original bsud with its defects corrected; see the planner's docstring. They are made of:

- ``bsud.reconcile.trigger``: when the drive needs space now (:func:`scale_up_reason`, which the daemon's sampler
  asks several times a second) and how big a volume sized for the writer is;
- ``bsud.reconcile.removal``: the used % once a volume is gone (one formula), the writes that hold a removal back,
  and when a removal under way is abandoned;
- ``bsud.reconcile.shrink``: the way down for a drive under ``min-used-space-perc``.
"""

from __future__ import annotations

import math

from bsud.config import DriveConfig
from bsud.naming import REMOVING
from bsud.reconcile.model import CreateVolume, Direction, MarkVolume, Pace, ScaleDecision, UsageObs, VolumeObs
from bsud.reconcile.removal import burst_blocks_removal, metadata_percent_after, used_percent_after
from bsud.reconcile.shrink import shrink_decision
from bsud.reconcile.trigger import rate_sized, rate_text, scale_up_reason, time_to_full

__all__ = ["ScaleDecision", "grown_gib", "scale_decision", "scale_up_reason"]  # the sampler's trigger, here too


def scale_decision(spec: DriveConfig, members: list[VolumeObs], usage: UsageObs,
                   max_volume_gib: int, pace: Pace = Pace()) -> ScaleDecision:
    """Scale up, down, or nothing, for a mounted drive whose volumes are all members. Pure.

    The trigger (:func:`scale_up_reason`) is asked once; the decision carries its reason and its direction (a
    removal or a volume added to move data onto is down, a volume added for space is up), and a note explaining
    why nothing is done when a limit stops it.
    """
    up = scale_up_reason(spec, usage, pace)
    if up is None and usage.used_percent <= spec.min_used_space_perc:
        down = shrink_decision(spec, members, usage, max_volume_gib, pace)
        if down.action is not None or len(members) < spec.max_bsu_count:
            return down
    if len(members) > 1 and len(members) >= spec.max_bsu_count:
        replacing = _replace_smallest(spec, members, usage, pace, up)
        if replacing.action is not None or replacing.note is not None:
            return replacing
    if up:
        return _add_volume(spec, members, usage, pace, up, max_volume_gib)
    return ScaleDecision()


def _replace_smallest(spec: DriveConfig, members: list[VolumeObs], usage: UsageObs, pace: Pace,
                      up: str | None) -> ScaleDecision:
    """At max-bsu-count: the smallest volume leaves to keep a slot free for growth, when the data fits without it
    and no burst holds it back; else, when the drive needs space, a note saying it cannot grow."""
    count = len(members)
    smallest = min(members, key=lambda v: (v.size_gib, v.id))
    after = used_percent_after(usage, smallest.size_bytes)
    burst = burst_blocks_removal(spec, usage, pace, smallest.size_bytes)
    metadata_fits = metadata_percent_after(usage, smallest.size_bytes) < spec.max_used_space_perc
    if after < spec.max_used_space_perc and metadata_fits and burst is None:
        why = f"{count} volumes reach max-bsu-count {spec.max_bsu_count}"
        return ScaleDecision(MarkVolume(volume_id=smallest.id, value=REMOVING,
                                        reason=f"{why}: replacing the smallest ({smallest.size_gib} GiB) keeps a "
                                               f"slot free (used {usage.used_percent:.1f}% → {after:.1f}%)"),
                             Direction.DOWN, why)
    if up:
        return ScaleDecision(reason=up, note=(f"{up}, but {count} volumes is max-bsu-count and "
                                              + (burst or ("the data" if metadata_fits else "its metadata")
                                                 + " would not fit without the smallest")
                                              + f"; raise max-bsu-count or free space{_left_text(usage, pace)}"))
    return ScaleDecision()


def _add_volume(spec: DriveConfig, members: list[VolumeObs], usage: UsageObs, pace: Pace, up: str,
                max_volume_gib: int) -> ScaleDecision:
    """The drive needs space: a volume added, within max-bsu-count and max-total-size-gib (else a note)."""
    sizes = [v.size_gib for v in members]
    if len(members) >= spec.max_bsu_count:
        return ScaleDecision(reason=up, note=f"{up}, but max-bsu-count ({spec.max_bsu_count}) is reached"
                                             f"{_left_text(usage, pace)}")
    room = math.inf if spec.max_total_size_gib is None else spec.max_total_size_gib - sum(sizes)
    if room < 1:
        return ScaleDecision(reason=up, note=f"{up}, but max-total-size-gib ({spec.max_total_size_gib}) is reached"
                                             f"{_left_text(usage, pace)}")
    if len(members) < spec.max_bsu_count - 1 and min(sizes) > spec.initial_size_gib:
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
    return ScaleDecision(CreateVolume(size_gib=size, reason=why.format(size=size)), Direction.UP, up)


def grown_gib(size_gib: int, factor_perc: int) -> int:
    """``size × (1 + factor)`` rounded up, in integers (floating point made 100 GiB × 1.1 into 111)."""
    return size_gib + -(-size_gib * factor_perc // 100)


def _left_text(usage: UsageObs, pace: Pace) -> str:
    left = time_to_full(usage, pace)
    return "" if math.isinf(left) else f"; full in {left:.0f} s at {rate_text(pace.write_rate)}"
