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
- at or below ``min-used-space-perc``: go to the size that puts used near the middle by the way that
  moves the fewest bytes — volumes chosen by the live data on them, at most one new "ideal" volume
  (used / (middle − margin)) to move data onto (``shrink_options``); the original only ever
  considered the largest volume, and stayed oversized when the data did not fit without it.
- hysteresis: a volume is removed only when the drive's used % after removal stays at or
  under the middle of min and max, so a removal can never trigger a scale-up, and a
  scale-up can never be undone by the next scale-down.
"""

from __future__ import annotations

from datetime import datetime, timezone

from bsud.config import DriveConfig, Target
from bsud.naming import AVAILABLE, CREATING, DEFAULT_MAX_VOLUME_GIB, DELETED, DELETING, ERROR
from bsud.reconcile.assembly import ASSEMBLY
from bsud.reconcile.model import (
    EVACUATED,
    NEW,
    REMOVING,
    Action,
    ApplyExports,
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
    Plan,
    Refresh,
    Remount,
    RemoveFromDrive,
    RetireVolume,
    Unmount,
    VolumeObs,
    Wait,
    WithdrawExports,
)
from bsud.reconcile.scaling import ideal_bytes, removal_no_longer_fits, scale_decision, scale_up_reason


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
    for v in live:
        if v.bookkeeping == NEW and v.attached_here:
            # Before anything is written on it: once attached, "never attached, holds nothing" no longer holds.
            return Plan(MarkVolume(volume_id=v.id, value="", reason=f"{v.id} is attached: dropping its '{NEW}' mark"),
                        "attaching", tuple(notes))

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
    if obs.exports.present and (not obs.mounted or obs.read_only):
        why = "the drive is not mounted" if not obs.mounted else "the filesystem is to be mounted again"
        return Plan(WithdrawExports(reason=f"{why}: its exports go first (an empty directory is never exported, "
                                           "and an export would keep the mount busy)"), "recovering", tuple(notes))
    if not obs.mounted:
        return Plan(Mount(reason="the filesystem is not mounted"), "mounting", tuple(notes))
    if obs.read_only:
        return Plan(Remount(reason="the kernel made the filesystem read-only after I/O errors (was a volume "
                                   "detached while mounted?): unmounting and mounting it again"),
                    "recovering", tuple(notes))
    if fresh:
        return Plan(Join(volume_id=fresh[0].id, reason=f"{fresh[0].id} is attached but not part of the drive"),
                    "scaling-up", tuple(notes))
    held = dict(obs.removal_held)
    for v in removing:
        if v.member and v.id in held:
            return Plan(MarkVolume(volume_id=v.id, value="", reason=f"abandoning the removal of {v.id}: {held[v.id]}; "
                                   "it stays in the drive"), "scaling-down", tuple(notes))
        if v.member and obs.usage is not None:
            why = removal_no_longer_fits(spec, obs.usage, obs.pace, members, v)
            if why:
                return Plan(MarkVolume(volume_id=v.id, value="", reason=f"abandoning the removal of {v.id}: {why}; "
                                       "it stays in the drive"), "scaling-up", tuple(notes))
        if v.member or v.own:
            # own but not a member: an orphan PV left by a stop between vgreduce and pvremove.
            keep = ideal_bytes(spec, obs.usage) if obs.usage else None
            data = f" ({v.live_bytes / 1024**2:.0f} MiB of the drive's data on it)" if v.live_bytes is not None else ""
            return Plan(RemoveFromDrive(volume_id=v.id, keep_bytes=keep, live_bytes=v.live_bytes,
                                        reason=f"moving data off {v.id} before it leaves the drive{data}"),
                        "scaling-down", tuple(notes))
    if obs.can_grow or obs.move_in_progress:
        return Plan(Grow(reason="the filesystem can use more space"), "growing", tuple(notes))
    odd = [v.id for v in live if not v.member]
    if odd:
        return Plan(Wait(reason=f"cannot tell what {', '.join(odd)} hold (neither part of the drive, blank, nor "
                                "foreign); looking again"), "online", tuple(notes))
    if obs.usage is None:
        return _settled(obs, notes)
    action, note = scale_decision(spec, members, obs.usage, max_volume_gib, obs.pace)
    if isinstance(action, MarkVolume) and action.volume_id in held:
        action, note = None, f"not removing {action.volume_id} for now: {held[action.volume_id]}"
    if note:
        notes.append(note)
    if action is None:
        return _settled(obs, notes)
    phase = "scaling-up" if isinstance(action, CreateVolume) and \
        scale_up_reason(spec, obs.usage, obs.pace) is not None else "scaling-down"
    return Plan(action, phase, tuple(notes))


def _settled(obs: DriveObs, notes: list[str]) -> Plan:
    """Nothing to build or scale: the exports, then idle. (Exports come after scaling: an export that keeps failing
    must never hold back the space the drive needs.)

    The phase is ``exporting`` while the exports are applied and no attempt failed yet (after the mount, a change,
    drift). Once one failed the drive is ``online``: mounted, serving everything else; a note says which export,
    why, and when it is tried again — the engine spaces the attempts out (10 s, 20 s, … up to 5 minutes) and the
    planner plans nothing for the exports meanwhile."""
    e = obs.exports
    if e.in_sync:
        return Plan(Idle(reason="online"), "online", tuple(notes))
    if not e.error:
        return Plan(ApplyExports(reason=e.detail or "the exports differ from the config"), "exporting", tuple(notes))
    which = ", ".join(e.failing) or "of the drive"
    when = datetime.fromtimestamp(e.retry_at, timezone.utc).strftime("%H:%M:%S UTC") if e.retry_at is not None \
        else "now"
    tries = f" ({e.attempts} failed attempt{'s' if e.attempts != 1 else ''})" if e.attempts else ""
    if e.held:
        note = f"export {which} not applied{tries}: {e.error}; tried again at {when}"
        return Plan(Idle(reason=f"online; export {which} not applied, tried again at {when}"), "online",
                    (*notes, note))
    note = f"export {which} not applied{tries}: {e.error}; trying again now"
    return Plan(ApplyExports(reason=f"trying again: {e.detail or 'the exports differ from the config'}"), "online",
                (*notes, note))


def _plan_offline(obs: DriveObs) -> Plan | None:
    if obs.exports.present:
        return Plan(WithdrawExports(reason="target is offline: exports first, so the unmount finds nothing busy"),
                    "going-offline")
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
        online = _plan_online(spec, obs, max_volume_gib)
        if obs.attach_refused and isinstance(online.action, CreateVolume | AttachVolume):
            # The VM takes no more volumes: nothing is created (it could not be attached) nor attached until a person
            # acted or the engine tries again.
            return Plan(Blocked(reason=obs.attach_refused), "blocked", online.notes)
        return online
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
