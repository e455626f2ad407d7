"""The right size after a burst: where a drive under ``min-used-space-perc`` goes, and by which way. Pure.

Every way down is weighed (:func:`shrink_options`: the volumes kept, at most one new volume to move data onto) and
the next step of the best one is taken (:func:`shrink_decision`); the plan is made again after every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bsud.config import DriveConfig
from bsud.naming import GIB, REMOVING
from bsud.reconcile.model import CreateVolume, Direction, MarkVolume, Pace, ScaleDecision, UsageObs, VolumeObs
from bsud.reconcile.removal import (IDEAL_MARGIN, burst_blocks_removal, ideal_bytes, metadata_percent_after,
                                    middle_percent, used_percent_after)

MIB = 1024**2
#: A volume is added to move data onto (a replacement) only when the drive ends up at most this fraction of its
#: size: moving a volume's data is worth halving the drive, not shaving a few GiB off it (a classic scale-up that
#: lands just under min-used-space-perc is left alone, as the original's hysteresis did).
REPLACE_AT_MOST = 0.5


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
    middle = middle_percent(spec)

    def used_at(capacity_gib: int) -> float:
        return used_percent_after(usage, (total - capacity_gib) * GIB)

    def fits(capacity_gib: int, limit: float) -> bool:
        # the data, and the metadata too: a drive whose metadata the removal fills is grown again at once
        removed = (total - capacity_gib) * GIB
        return used_percent_after(usage, removed) <= limit and metadata_percent_after(usage, removed) <= limit

    # The ideal size counted as the drive will be (its metadata and system chunks take their share of any size):
    # one counted on the data alone can end over the middle, where the next plan would take the new volume out again
    ideal_gib = math.ceil(ideal_bytes(spec, usage) / GIB)
    while ideal_gib < total and not fits(ideal_gib, max(middle - IDEAL_MARGIN, 1.0)):
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
        if cap >= spec.initial_size_gib and fits(cap, middle):
            options.append(Shrink(
                keep=tuple(v.id for v in keep), remove=order(removed), add_gib=0, add_first=False,
                moved=all_live - kept, capacity_gib=cap, used_after=after,
                converged=after > spec.min_used_space_perc or cap <= ideal_gib))
        add = ideal_gib - cap
        if add < 1 or add > max_volume_gib or ideal_gib > total * REPLACE_AT_MOST or not fits(ideal_gib, middle):
            continue
        slot = len(members) + 1 <= spec.max_bsu_count
        room = spec.max_total_size_gib is None or total + add <= spec.max_total_size_gib
        first = slot and room
        if not first and not (keep and fits(cap, middle)):
            continue  # no room to add it first, and the data does not fit on what stays until it comes
        options.append(Shrink(
            keep=tuple(v.id for v in keep), remove=order(removed), add_gib=add, add_first=first,
            moved=all_live - kept, capacity_gib=ideal_gib, used_after=used_at(ideal_gib), converged=True))
    return sorted(options, key=Shrink.key)


def shrink_decision(spec: DriveConfig, members: list[VolumeObs], usage: UsageObs, max_volume_gib: int,
                    pace: Pace = Pace()) -> ScaleDecision:
    """The next step of the best way down for a drive under ``min-used-space-perc`` (see :func:`shrink_options`),
    or no action with a note saying why it stays as it is. Pure.

    The plan is made again after every step, on what the drive holds then; a step is never taken into a burst
    (:func:`burst_blocks_removal`, for the capacity the drive ends up with).
    """
    pct = usage.used_percent
    total = sum(v.size_gib for v in members)
    lows = f"used {pct:.1f}% <= {spec.min_used_space_perc}%"
    options = shrink_options(spec, members, usage, max_volume_gib)
    if not options:
        if total <= spec.initial_size_gib or len(members) == 1 and \
                math.ceil(ideal_bytes(spec, usage) / GIB) >= total:
            return ScaleDecision()
        return ScaleDecision(note=f"{lows}, but no smaller drive keeps used under {middle_percent(spec):g}% and at "
                                  f"least initial-size-gib ({spec.initial_size_gib}), and a new volume to move the "
                                  "data onto would not halve the drive or has no room (max-bsu-count, "
                                  "max-total-size-gib)")
    best, blocked = _first_not_held(spec, usage, pace, total, options)
    if best is None:
        return ScaleDecision(note=blocked)
    known = "" if all(v.live_bytes is not None for v in members) else " (data per volume not known: by size)"
    plan = f"{best.describe({v.id: v.size_gib for v in members})}{known}"
    if best.add_gib and best.add_first:
        return ScaleDecision(CreateVolume(size_gib=best.add_gib, reason=f"{lows}: {plan}; first the new volume to "
                                          "move the data onto"), Direction.DOWN, lows)
    victim = best.remove[0]
    return ScaleDecision(MarkVolume(volume_id=victim, value=REMOVING, reason=f"{lows}: {plan}; now {victim}"),
                         Direction.DOWN, lows)


def _first_not_held(spec: DriveConfig, usage: UsageObs, pace: Pace, total: int,
                    options: list[Shrink]) -> tuple[Shrink | None, str | None]:
    """The best way no burst holds back (:func:`burst_blocks_removal`, for the capacity the drive ends up with), or
    None and why. A way that does not get there is no fallback for one a burst holds back."""
    if options[0].converged:
        options = [o for o in options if o.converged]
    blocked = None
    for option in options:
        burst = burst_blocks_removal(spec, usage, pace, (total - option.capacity_gib) * GIB)
        if burst is None:
            return option, None
        blocked = blocked or burst
    return None, blocked
