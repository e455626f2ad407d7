"""The planner: from a drive's spec and what was observed, the next step. No side effects.

Only the first action of a plan is executed; the drive is then observed again, so every
decision is made on fresh state and an interrupted step is simply planned again.

Scaling follows the original bsud, with its defects corrected:

- at or above ``max-used-space-perc``: add a volume — the smallest × (1 − factor), floored at
  ``initial-size-gib``, while two or more slots are free and no volume of the initial size
  exists yet; otherwise the largest × (1 + factor). Capped at the cloud's volume size limit
  and at what ``max-total-size-gib`` leaves (the original could overshoot it).
- a volume count at ``max-bsu-count`` replaces its smallest volume to keep a slot free for
  growth (never with a single volume: the original underflowed ``max-bsu-count - 1``).
- at or below ``min-used-space-perc``: remove the largest volume, or with a single volume,
  add an "ideal" one (used / (middle − margin)) to migrate onto.
- hysteresis: a volume is removed only when the drive's used % after removal stays at or
  under the middle of min and max, so a removal can never trigger a scale-up, and a
  scale-up can never be undone by the next scale-down.
"""

from __future__ import annotations

import math

from bsud.config import DriveConfig, Target
from bsud.naming import AVAILABLE, CREATING, DEFAULT_MAX_VOLUME_GIB, DELETED, DELETING, ERROR
from bsud.reconcile.assembly import ASSEMBLY
from bsud.reconcile.model import (
    EVACUATED,
    GIB,
    REMOVING,
    Action,
    AttachVolume,
    Blocked,
    CreateVolume,
    Deactivate,
    DeleteVolume,
    DetachVolume,
    DriveObs,
    Grow,
    Idle,
    Join,
    MarkVolume,
    Mount,
    Pace,
    Plan,
    Refresh,
    Remount,
    RemoveFromDrive,
    RetireVolume,
    Unmount,
    UsageObs,
    VolumeObs,
    Wait,
)

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


def _plan_evacuated(v: VolumeObs) -> tuple[Action, str] | None:
    """A volume marked evacuated: verified blank before it is deleted, or taken back when it holds something.

    The original bsud (same tags) re-adds such a volume to its VG when it runs again, and a detached volume may
    have been written elsewhere: nothing is deleted without being attached here and found blank.
    """
    if v.member:
        return MarkVolume(volume_id=v.id, value="", reason=f"{v.id} is part of the drive again: dropping its "
                          f"'{EVACUATED}' mark"), "online"
    if not v.attached_here:
        if v.state == AVAILABLE:
            return AttachVolume(volume_id=v.id, reason=f"{v.id} is out of the drive and detached: attaching it to "
                                "check it is blank before deleting it"), "scaling-down"
        return None
    if v.device_error:
        return Blocked(reason=v.device_error), "blocked"
    if v.device is None:
        return Wait(reason=f"waiting for the device of {v.id}"), "scaling-down"
    if v.blank:
        return RetireVolume(volume_id=v.id, reason=f"{v.id} is out of the drive and verifiably blank"), "scaling-down"
    if v.own:
        return MarkVolume(volume_id=v.id, value=REMOVING, reason=f"{v.id} is marked '{EVACUATED}' but holds the "
                          "drive's signature: finishing its removal first"), "scaling-down"
    if v.foreign:
        return Blocked(reason=f"{v.foreign} (it is marked '{EVACUATED}': bsud will not delete it)"), "blocked"
    return Wait(reason=f"cannot tell what {v.id} holds; not deleting it"), "scaling-down"


def removal_no_longer_fits(spec: DriveConfig, usage: UsageObs, pace: Pace, members: list[VolumeObs],
                           volume: VolumeObs) -> str | None:
    """Why a removal in progress must be abandoned (the volume stays), or None. Growth comes first."""
    up = scale_up_reason(spec, usage, pace)
    if up:
        return f"the drive needs space ({up})"
    capacity_after = sum(v.size_bytes for v in members) - volume.size_bytes
    after = 100.0 * usage.used / capacity_after if capacity_after > 0 else math.inf
    if after >= spec.max_used_space_perc:
        return f"the data would fill {after:.1f}% of the drive without it"
    return None


def _plan_online(spec: DriveConfig, obs: DriveObs, max_volume_gib: int) -> Plan:
    notes: list[str] = []
    vols = [v for v in obs.volumes if v.state not in (DELETING, DELETED)]
    for v in vols:
        if v.state == ERROR:
            notes.append(f"volume {v.id} is in state 'error' and is not used; delete it or repair it in the cloud")
    vols = [v for v in vols if v.state != ERROR]

    for v in vols:
        if v.attached_elsewhere and not v.attached_here:
            return Plan(Blocked(reason=f"volume {v.id} is attached to {v.attached_elsewhere}; detach it there "
                                       "(or remove its tag) to bring the drive online here"), "blocked", tuple(notes))

    for v in vols:
        if v.bookkeeping == EVACUATED:
            retiring = _plan_evacuated(v)
            if retiring is not None:
                return Plan(retiring[0], retiring[1], tuple(notes))
    live = [v for v in vols if v.bookkeeping != EVACUATED]
    creating = [v for v in live if v.state == CREATING]

    if not live:
        return Plan(CreateVolume(size_gib=spec.initial_size_gib, reason="the drive has no volume yet"),
                    "creating", tuple(notes))
    for v in live:
        if v.state == AVAILABLE and not v.attached_here:
            why = f"{v.id} is not attached"
            if obs.missing and (obs.mounted or obs.active):
                why = (f"{v.id} was detached while the drive is in use, not by bsud ({obs.missing}; reading or "
                       "writing there fails meanwhile): attaching it back")
            return Plan(AttachVolume(volume_id=v.id, reason=why), "attaching", tuple(notes))
    for v in live:
        if v.device_error:
            return Plan(Blocked(reason=v.device_error), "blocked", tuple(notes))
    waiting = [v.id for v in live if v.attached_here and v.device is None]
    if waiting:
        return Plan(Wait(reason=f"waiting for the device of {', '.join(waiting)}"), "attaching", tuple(notes))
    if creating:
        return Plan(Wait(reason=f"waiting for {', '.join(v.id for v in creating)} to be created"), "creating",
                    tuple(notes))
    for v in live:
        if v.foreign:
            return Plan(Blocked(reason=v.foreign), "blocked", tuple(notes))
    if obs.missing:
        return Plan(Blocked(reason=f"{obs.missing}, and no volume tagged for the drive and attached here provides "
                                   "it: one of its volumes was deleted or lost its tag. bsud changes nothing on this "
                                   "drive until it is back (tag it and attach it again); if it is gone for good, "
                                   "see 'A volume lost' in docs/operations.md"), "blocked", tuple(notes))
    if obs.stale:
        return Plan(Refresh(reason=f"the drive's LV still maps to {', '.join(obs.stale)}, which went away (a volume "
                                   "detached behind bsud's back and attached again): reloading its table"),
                    "recovering", tuple(notes))

    members = [v for v in live if v.member]
    removing = [v for v in live if v.bookkeeping == REMOVING]
    for v in removing:
        if not v.member and v.blank:
            return Plan(MarkVolume(volume_id=v.id, value=EVACUATED, reason=f"{v.id} verifiably holds nothing of "
                                   "the drive any more"), "scaling-down", tuple(notes))
    fresh = [v for v in live if not v.member and (v.blank or v.own) and v.bookkeeping != REMOVING]

    assembling = ASSEMBLY[spec.layout](obs, members, fresh)
    if assembling is not None:
        return Plan(assembling[0], assembling[1], tuple(notes))
    if obs.mount_blocked:
        return Plan(Blocked(reason=obs.mount_blocked), "blocked", tuple(notes))
    if not obs.mounted:
        return Plan(Mount(reason="the filesystem is not mounted"), "mounting", tuple(notes))
    if obs.read_only:
        return Plan(Remount(reason="the kernel made the filesystem read-only after I/O errors (was a volume "
                                   "detached while mounted?): unmounting and mounting it again"),
                    "recovering", tuple(notes))
    if fresh:
        return Plan(Join(volume_id=fresh[0].id, reason=f"{fresh[0].id} is attached but not part of the drive"),
                    "scaling-up", tuple(notes))
    for v in removing:
        if v.member and obs.usage is not None:
            why = removal_no_longer_fits(spec, obs.usage, obs.pace, members, v)
            if why:
                return Plan(MarkVolume(volume_id=v.id, value="", reason=f"abandoning the removal of {v.id}: {why}; "
                                       "it stays in the drive"), "scaling-up", tuple(notes))
        if v.member or v.own:
            # own but not a member: an orphan PV left by a stop between vgreduce and pvremove.
            keep = ideal_bytes(spec, obs.usage) if obs.usage else None
            return Plan(RemoveFromDrive(volume_id=v.id, keep_bytes=keep,
                                        reason=f"moving data off {v.id} before it leaves the drive"),
                        "scaling-down", tuple(notes))
    if obs.can_grow or obs.move_in_progress:
        return Plan(Grow(reason="the filesystem can use more space"), "growing", tuple(notes))
    odd = [v.id for v in live if not v.member]
    if odd:
        return Plan(Wait(reason=f"cannot tell what {', '.join(odd)} hold (neither part of the drive, blank, nor "
                                "foreign); looking again"), "online", tuple(notes))
    if obs.usage is None:
        return Plan(Idle(reason="online"), "online", tuple(notes))
    action, note = scale_decision(spec, members, obs.usage, max_volume_gib, obs.pace)
    if note:
        notes.append(note)
    if action is None:
        return Plan(Idle(reason="online"), "online", tuple(notes))
    phase = "scaling-up" if isinstance(action, CreateVolume) and \
        scale_up_reason(spec, obs.usage, obs.pace) is not None else "scaling-down"
    return Plan(action, phase, tuple(notes))


def _plan_offline(obs: DriveObs) -> Plan | None:
    if obs.mounted:
        return Plan(Unmount(reason="target is offline"), "going-offline")
    if obs.active:
        return Plan(Deactivate(reason="target is offline"), "going-offline")
    for v in obs.volumes:
        if v.attached_here:
            return Plan(DetachVolume(volume_id=v.id, reason="target is offline"), "going-offline")
    return None


def plan(spec: DriveConfig, obs: DriveObs, max_volume_gib: int = DEFAULT_MAX_VOLUME_GIB) -> Plan:
    """The next step for ``spec``'s drive given ``obs``. Pure: no I/O, no clock."""
    if spec.target == Target.ONLINE:
        return _plan_online(spec, obs, max_volume_gib)
    offline = _plan_offline(obs)
    if offline is not None:
        return offline
    if spec.target == Target.OFFLINE:
        return Plan(Idle(reason="offline"), "offline")
    for v in obs.volumes:
        if v.attached_elsewhere:
            return Plan(Blocked(reason=f"volume {v.id} is attached to {v.attached_elsewhere}; not deleting it"),
                        "blocked")
    for v in obs.volumes:
        if v.state == AVAILABLE or v.state == ERROR:
            return Plan(DeleteVolume(volume_id=v.id, reason="target is delete"), "deleting")
    pending = [v.id for v in obs.volumes if v.state in (CREATING, DELETING)]
    if pending:
        return Plan(Wait(reason=f"waiting for {', '.join(pending)}"), "deleting")
    return Plan(Idle(reason="deleted"), "deleted")
