"""Whether a volume may leave a drive: the drive's used % once capacity is gone, the writes that hold a removal
back, and when a removal under way is abandoned. Pure.

One formula says what a removal leaves (:func:`used_percent_after`, :func:`usage_after`): the data pool as btrfs
counts it (``used + free``) less the bytes of the filesystem that go, and the metadata pool less its share of them.
The rule that starts a removal (a replacement at max-bsu-count, a way down in ``bsud.reconcile.shrink``), the one
that holds it back for a burst and the one that abandons it all count with it, so that what one allows the other
does not undo at once.
"""

from __future__ import annotations

import math
from dataclasses import replace

from bsud.config import DriveConfig
from bsud.naming import GIB
from bsud.reconcile.model import Pace, UsageObs, VolumeObs
from bsud.reconcile.trigger import rate_text, scale_up_reason, seconds_to_full

#: Percentage points kept between an "ideal" volume's expected fill and the middle threshold.
IDEAL_MARGIN = 5.0
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


def shrink_keep_bytes(spec: DriveConfig, usage: UsageObs) -> int:
    """The size an lvm removal shrinks the filesystem to before its pvmove: the ideal data pool
    (:func:`ideal_bytes`) plus the device bytes the metadata (DUP) and system chunks take now (``size`` less the data
    pool). Shrunk to the ideal alone, a metadata-heavy drive's resize fails with ENOSPC (the removal is held for an
    hour), or leaves the data pool that much under the ideal."""
    ideal = ideal_bytes(spec, usage)
    if not usage.size:
        return ideal  # no device figures
    return ideal + max(0, usage.size - usage.used - usage.free)


def data_capacity_after(usage: UsageObs, removed_bytes: int) -> int:
    """The data pool once ``removed_bytes`` of the filesystem are gone (what its used % is counted on)."""
    return usage.used + usage.free - removed_bytes


def usage_after(usage: UsageObs, removed_bytes: int) -> UsageObs:
    """The drive's space once ``removed_bytes`` of the filesystem are gone: the data pool less them, and the
    metadata pool with what is left for it. A removal judged on the data alone can leave the metadata full: the
    trigger then grows the drive again, the shrink removes the volume again, for ever.

    The metadata's free room is the free part of its chunks plus the unallocated space at two device bytes a byte
    (DUP). A removal relocates the chunks onto what stays, the data packed into as many chunks as it needs: what
    is left unallocated then is about the data pool's free room less the bytes removed (its chunks' slack is
    given back by the packing). The unallocated space now is solved from the figures the kernel gives (``size`` =
    data chunks + 2 × metadata chunks + unallocated, the system chunks neglected: an underestimate of the metadata's
    room, on the safe side)."""
    free = max(0, usage.free - removed_bytes)
    if usage.metadata_used == 0 and usage.metadata_free == 0 or not usage.size:
        return replace(usage, free=free)  # no metadata figures
    unallocated = usage.free + usage.used + 2 * (usage.metadata_free + usage.metadata_used) - usage.size
    unallocated = min(max(0, unallocated), usage.free)
    in_chunks = max(0, usage.metadata_free - unallocated // 2)
    return replace(usage, free=free, metadata_free=min(usage.metadata_free, in_chunks + free // 2))


def metadata_percent_after(usage: UsageObs, removed_bytes: int) -> float:
    """Metadata used % once ``removed_bytes`` of the filesystem are gone (see :func:`usage_after`)."""
    return usage_after(usage, removed_bytes).metadata_percent


def used_percent_after(usage: UsageObs, removed_bytes: int) -> float:
    """Used % once ``removed_bytes`` of the filesystem are gone (infinite when the data would not fit)."""
    remaining = data_capacity_after(usage, removed_bytes)
    if remaining <= usage.used:
        return math.inf
    return 100.0 * usage.used / remaining


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
    room = data_capacity_after(usage, removed_bytes) * spec.max_used_space_perc / 100 - usage.used
    horizon = QUIET_GROW_TIMES * pace.grow_seconds
    if room / rate < horizon:
        return (f"no scale-down: at {rate_text(rate)} the drive would pass {spec.max_used_space_perc}% within "
                f"{room / rate:.0f} s of the removal ({QUIET_GROW_TIMES} grow times is {horizon:.0f} s)")
    return None


def leaving_bytes(usage: UsageObs, members: list[VolumeObs], volume: VolumeObs) -> int:
    """What of the filesystem still goes with ``volume`` (a member being removed): all of it on btrfs's own device;
    on lvm, none once the LV was reduced to the other volumes before the pvmove, the part beyond them before. As
    the sampler counts it (size less what is leaving), so that both see the same space."""
    capacity_after = sum(v.size_bytes for v in members) - volume.size_bytes
    size = usage.size or usage.used + usage.free
    return min(volume.size_bytes, max(0, size - max(capacity_after, 0)))


def removal_no_longer_fits(spec: DriveConfig, usage: UsageObs, pace: Pace, members: list[VolumeObs],
                           volume: VolumeObs, keep: int | None = None) -> str | None:
    """Why a removal in progress must be abandoned (the volume stays), or None. Growth comes first.

    The drive is judged as it will be without the volume — as the sampler judged it while the removal's move ran
    (a burst pre-empts a removal), not on the capacity a cancelled move just gave back: else the removal would be
    started again into the same burst, and stopped again, and the drive would never grow.

    Its used % is :func:`used_percent_after` (the trigger's first rule reads it on the drive without the volume):
    a removal is abandoned at ``max-used-space-perc`` counted as it was started, on the data pool.

    ``keep``: the size the removal shrinks the filesystem to while it moves the data (lvm: the ideal size, below
    what the volumes that stay hold): the sampler judges the drive at that size then, and so does this — else a
    writer the shrunk drive cannot take would stop the move, and the removal would be started again, for as long as
    the writer runs."""
    gone = leaving_bytes(usage, members, volume)
    if keep is not None:
        gone = max(gone, (usage.size or usage.used + usage.free) - keep)
    up = scale_up_reason(spec, usage_after(usage, gone), pace)
    return f"the drive needs space ({up})" if up else None
