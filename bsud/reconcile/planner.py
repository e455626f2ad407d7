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

from bsud.config import DriveConfig, Layout, Target
from bsud.naming import (AVAILABLE, CREATING, DEFAULT_MAX_VOLUME_GIB, DELETED, DELETING, ERROR, label_for,
                         restored_from)
from bsud.reconcile.assembly import ASSEMBLY
from bsud.reconcile.leaving import Step, down, plan_evacuated, plan_removals, at, up
from bsud.reconcile.model import (EVACUATED, NEW, REMOVING, AdoptRestored, ApplyExports, ApplyMountOptions,
                                  AttachVolume, Blocked, CreateVolume, Deactivate, DeleteVolume, DetachVolume,
                                  Direction, DriveObs, Grow, Idle, Join, MarkVolume, Mount, Phase, Plan, Refresh,
                                  Remount, RestoreVolumes, ScaleDecision, Unmount, VolumeObs, Wait, WithdrawExports)
from bsud.reconcile.replicated import plan_peer, plan_replicated, plan_replicated_offline
from bsud.reconcile.scaling import scale_decision


def _usable(obs: DriveObs, notes: list[str]) -> list[VolumeObs]:
    """The drive's volumes not being deleted nor in error (a note for each in error)."""
    vols = [v for v in obs.volumes if v.state not in (DELETING, DELETED)]
    for v in vols:
        if v.state == ERROR:
            notes.append(f"volume {v.id} is in state 'error' and is not used; delete it or repair it in the cloud")
    return [v for v in vols if v.state != ERROR]


def _plan_cloud(spec: DriveConfig, obs: DriveObs, vols: list[VolumeObs]) -> Step | None:
    """The volumes as the cloud has them: none attached elsewhere, the evacuated retired, each created, attached
    here and its device found."""
    for v in vols:
        if v.attached_elsewhere and not v.attached_here:
            return at(Phase.BLOCKED, Blocked(reason=f"volume {v.id} is attached to {v.attached_elsewhere}; detach "
                                             "it there (or remove its tag) to bring the drive online here"))
    for v in vols:
        retiring = plan_evacuated(v) if v.bookkeeping == EVACUATED else None
        if retiring is not None:
            return retiring
    live = [v for v in vols if v.bookkeeping != EVACUATED]
    for v in live:
        if v.bookkeeping == NEW and v.attached_here:
            # Before anything is written on it: once attached, "never attached, holds nothing" no longer holds.
            return at(Phase.ATTACHING, MarkVolume(volume_id=v.id, value="", reason=f"{v.id} is attached: "
                                                  f"dropping its '{NEW}' mark"))
    if not live:
        if spec.from_snapshot_set:
            return at(Phase.CREATING, RestoreVolumes(set_id=spec.from_snapshot_set, reason="the drive has no volume "
                                                     f"yet: making them from snapshot set {spec.from_snapshot_set}"))
        return at(Phase.CREATING, CreateVolume(size_gib=spec.initial_size_gib, reason="the drive has no volume yet"))
    restoring = _restoring(spec, obs, live)
    if restoring is not None and restoring[1] > len(restoring[2]):
        return at(Phase.CREATING, RestoreVolumes(set_id=restoring[0], reason=f"{len(restoring[2])} of the "
                                                 f"{restoring[1]} volumes made from snapshot set {restoring[0]}: "
                                                 "making the others"))
    for v in live:
        if v.state == AVAILABLE and not v.attached_here:
            why = f"{v.id} is not attached"
            missing = obs.storage.missing
            if missing and (obs.mounted or obs.active):
                why = (f"{v.id} was detached while the drive is in use, not by bsud ({missing}; reading or "
                       "writing there fails meanwhile): attaching it back")
            return at(Phase.ATTACHING, AttachVolume(volume_id=v.id, reason=why))
    for v in live:
        if v.device_error:
            return at(Phase.BLOCKED, Blocked(reason=v.device_error))
    waiting = [v.id for v in live if v.attached_here and v.device is None]
    if waiting:
        return at(Phase.ATTACHING, Wait(reason=f"waiting for the device of {', '.join(waiting)}"))
    creating = [v.id for v in live if v.state == CREATING]
    if creating:
        return at(Phase.CREATING, Wait(reason=f"waiting for {', '.join(creating)} to be created"))
    return None


def _restoring(spec: DriveConfig, obs: DriveObs, live: list[VolumeObs]) -> tuple[str, int, list[VolumeObs]] | None:
    """The drive's volumes made from a snapshot set that is not the drive's own yet: the set, how many members it
    has, those made. None otherwise. Own: one of them is a member or carries the drive's signature (btrfs: its
    label; lvm: a PV of its VG) — and, lvm, the btrfs on its LV carries the drive's label (the adoption's last
    step: its VG renamed by ``vgimportclone`` is not the whole of it)."""
    made = [v for v in live if v.restored_from]
    if not made:
        return None
    label = obs.storage.fs_label
    if any(v.member or v.own for v in made) and label in (None, label_for(spec.name)):
        return None
    set_id, place = restored_from(made[0].restored_from or "")
    return set_id, place[1] if place else len(made), made


def _plan_restore(spec: DriveConfig, obs: DriveObs, live: list[VolumeObs]) -> Step | None:
    """Volumes made from a snapshot set, all attached here: the filesystem they hold is another drive's copy (its
    fsid, its label; lvm: its VG's name and UUIDs) — made this drive's before anything else looks at it (the gate
    sees it as foreign until then)."""
    restoring = _restoring(spec, obs, live)
    if restoring is None:
        return None
    set_id, count, made = restoring
    return at(Phase.ASSEMBLING, AdoptRestored(set_id=set_id, reason=f"the {count} volumes made from snapshot set "
                                              f"{set_id} hold a copy of another drive's filesystem: giving it this "
                                              "drive's identity (a new fsid, its label"
                                              + ("; the VG renamed, new UUIDs)" if spec.layout is Layout.LVM
                                                 else ")")))


def _plan_host(obs: DriveObs, live: list[VolumeObs]) -> Step | None:
    """What the host shows that stops everything: foreign data, a member missing, mappings gone stale."""
    for v in live:
        if v.foreign:
            return at(Phase.BLOCKED, Blocked(reason=v.foreign))
    storage = obs.storage
    if storage.missing:
        return at(Phase.BLOCKED, Blocked(reason=f"{storage.missing}, and no volume tagged for the drive and attached "
                                         "here provides it: one of its volumes was deleted or lost its tag. bsud "
                                         "changes nothing on this drive until it is back (tag it and attach it "
                                         "again); if it is gone for good, see 'A volume lost' in "
                                         "docs/operations.md"))
    if storage.stale:
        return at(Phase.RECOVERING, Refresh(reason=f"the drive's LV still maps to {', '.join(storage.stale)}, which "
                                            "went away (a volume detached behind bsud's back and attached "
                                            "again): reloading its table"))
    return None


def _plan_mount(spec: DriveConfig, obs: DriveObs, members: list[VolumeObs],
                fresh: list[VolumeObs]) -> Step | None:
    """The storage assembled, the filesystem mounted (exports withdrawn first when it is not) and read-write."""
    assembling = ASSEMBLY[spec.layout](obs, members, fresh)
    if assembling is not None:
        return at(assembling[1], assembling[0])
    if obs.mount_blocked:
        return at(Phase.BLOCKED, Blocked(reason=obs.mount_blocked))
    if obs.exports.present and (not obs.mounted or obs.read_only):
        why = "the drive is not mounted" if not obs.mounted else "the filesystem is to be mounted again"
        return at(Phase.RECOVERING, WithdrawExports(reason=f"{why}: its exports go first (an empty directory is "
                                                    "never exported, and an export would keep the mount busy)"))
    if not obs.mounted:
        return at(Phase.MOUNTING, Mount(reason="the filesystem is not mounted"))
    if obs.read_only:
        return at(Phase.RECOVERING, Remount(reason="the kernel made the filesystem read-only after I/O errors (was "
                                            "a volume detached while mounted?): unmounting and mounting it again"))
    return None


def _plan_online_replicated(spec: DriveConfig, obs: DriveObs, max_volume_gib: int) -> Plan:
    """A highly available drive (``bsud.reconcile.replicated``): the peer's drive kept as big as this one (by the
    Primary), the volumes, the LV (no filesystem, no mount: DRBD is on it), then DRBD's state decides."""
    notes: list[str] = []
    vols = _usable(obs, notes)
    live = [v for v in vols if v.bookkeeping != EVACUATED]
    members = [v for v in live if v.member]
    fresh = [v for v in live if not v.member and (v.blank or v.own) and v.bookkeeping != REMOVING]
    step = plan_peer(spec, obs, live, max_volume_gib) if _plan_host(obs, live) is None else None
    step = step or _plan_cloud(spec, obs, vols) or _plan_host(obs, live)
    if step is None:
        assembling = ASSEMBLY[spec.layout](obs, members, fresh)
        step = at(assembling[1], assembling[0]) if assembling else None
    if step is None and fresh:
        step = up(Join(volume_id=fresh[0].id, reason=f"{fresh[0].id} is attached but not part of the drive"))
    if step is not None:
        return Plan(step[0], step[1], tuple(notes), step[2])
    if obs.can_grow:
        return Plan(Grow(reason="the LV (or the filesystem on DRBD) can use more space"), Phase.GROWING, tuple(notes))
    odd = [v.id for v in live if not v.member]
    if odd:
        return Plan(Wait(reason=f"cannot tell what {', '.join(odd)} hold (neither part of the drive, blank, nor "
                                "foreign); looking again"), Phase.ONLINE, tuple(notes))
    return plan_replicated(spec, obs, members, max_volume_gib, notes)


def _plan_online(spec: DriveConfig, obs: DriveObs, max_volume_gib: int) -> Plan:
    if spec.ha is not None and obs.storage.replication is not None:
        return _plan_online_replicated(spec, obs, max_volume_gib)
    notes: list[str] = []
    vols = _usable(obs, notes)
    live = [v for v in vols if v.bookkeeping != EVACUATED]
    members = [v for v in live if v.member]
    removing = [v for v in live if v.bookkeeping == REMOVING]
    fresh = [v for v in live if not v.member and (v.blank or v.own) and v.bookkeeping != REMOVING]
    step = _plan_cloud(spec, obs, vols) or _plan_restore(spec, obs, live) or _plan_host(obs, live)
    if step is None:
        for v in removing:
            if not v.member and v.blank:
                step = down(MarkVolume(volume_id=v.id, value=EVACUATED, reason=f"{v.id} verifiably holds nothing "
                                       "of the drive any more"))
                break
    step = step or _plan_mount(spec, obs, members, fresh)
    if step is None and fresh:
        step = up(Join(volume_id=fresh[0].id, reason=f"{fresh[0].id} is attached but not part of the drive"))
    step = step or plan_removals(spec, obs, members, removing)
    if step is not None:
        return Plan(step[0], step[1], tuple(notes), step[2])
    if obs.can_grow or obs.storage.move_in_progress:
        return Plan(Grow(reason="the filesystem can use more space"), Phase.GROWING, tuple(notes))
    odd = [v.id for v in live if not v.member]
    if odd:
        return Plan(Wait(reason=f"cannot tell what {', '.join(odd)} hold (neither part of the drive, blank, nor "
                                "foreign); looking again"), Phase.ONLINE, tuple(notes))
    if obs.usage is None:
        return _settled(obs, notes)
    return _plan_scaling(spec, obs, members, max_volume_gib, notes)


def _plan_scaling(spec: DriveConfig, obs: DriveObs, members: list[VolumeObs], max_volume_gib: int,
                  notes: list[str]) -> Plan:
    """The drive is built, mounted and whole: scale it (one decision), or settle."""
    assert obs.usage is not None
    decision = scale_decision(spec, members, obs.usage, max_volume_gib, obs.pace)
    held = dict(obs.removal_held)
    action = decision.action
    if isinstance(action, MarkVolume) and action.volume_id in held:
        decision = ScaleDecision(note=f"not removing {action.volume_id} for now: {held[action.volume_id]}")
    if decision.note:
        notes.append(decision.note)
    if decision.action is None or decision.direction is None:
        return _settled(obs, notes)
    phase = Phase.SCALING_UP if decision.direction is Direction.UP else Phase.SCALING_DOWN
    return Plan(decision.action, phase, tuple(notes), decision.direction)


def _settled(obs: DriveObs, notes: list[str]) -> Plan:
    """Nothing to build or scale: the mount-options, the exports, then idle. (Both come after scaling: a remount or
    an export that keeps failing must never hold back the space the drive needs.)

    The phase is ``exporting`` while the exports are applied and no attempt failed yet (after the mount, a change,
    drift). Once one failed the drive is ``online``: mounted, serving everything else; a note says which export,
    why, and when it is tried again — the engine spaces the attempts out (10 s, 20 s, … up to 5 minutes) and the
    planner plans nothing for the exports meanwhile."""
    if obs.options_missing:
        return Plan(ApplyMountOptions(reason=f"mounted without {', '.join(obs.options_missing)} (its mount-options): "
                                      "remounting with them"), Phase.ONLINE, tuple(notes))
    e = obs.exports
    if e.in_sync:
        return Plan(Idle(reason="online"), Phase.ONLINE, tuple(notes))
    if not e.error:
        return Plan(ApplyExports(reason=e.detail or "the exports differ from the config"), Phase.EXPORTING,
                    tuple(notes))
    which = ", ".join(e.failing) or "of the drive"
    when = datetime.fromtimestamp(e.retry_at, timezone.utc).strftime("%H:%M:%S UTC") if e.retry_at is not None \
        else "now"
    tries = f" ({e.attempts} failed attempt{'s' if e.attempts != 1 else ''})" if e.attempts else ""
    if e.held:
        note = f"export {which} not applied{tries}: {e.error}; tried again at {when}"
        return Plan(Idle(reason=f"online; export {which} not applied, tried again at {when}"), Phase.ONLINE,
                    (*notes, note))
    note = f"export {which} not applied{tries}: {e.error}; trying again now"
    return Plan(ApplyExports(reason=f"trying again: {e.detail or 'the exports differ from the config'}"), Phase.ONLINE,
                (*notes, note))


def _plan_offline(obs: DriveObs) -> Plan | None:
    if obs.exports.present:
        return Plan(WithdrawExports(reason="target is offline: exports first, so the unmount finds nothing busy"),
                    Phase.GOING_OFFLINE)
    if obs.mounted:
        return Plan(Unmount(reason="target is offline"), Phase.GOING_OFFLINE)
    if obs.active:
        return Plan(Deactivate(reason="target is offline"), Phase.GOING_OFFLINE)
    for v in obs.volumes:
        if v.attached_here:
            return Plan(DetachVolume(volume_id=v.id, reason="target is offline"), Phase.GOING_OFFLINE)
    return None


def plan(spec: DriveConfig, obs: DriveObs, max_volume_gib: int = DEFAULT_MAX_VOLUME_GIB) -> Plan:
    """The next step for ``spec``'s drive given ``obs``. Pure: no I/O, no clock."""
    if spec.target == Target.ONLINE:
        online = _plan_online(spec, obs, max_volume_gib)
        if obs.attach_refused and isinstance(online.action, CreateVolume | AttachVolume):
            # The VM takes no more volumes: nothing is created (it could not be attached) nor attached until a person
            # acted or the engine tries again.
            return Plan(Blocked(reason=obs.attach_refused), Phase.BLOCKED, online.notes)
        return online
    offline = plan_replicated_offline(obs) or _plan_offline(obs)
    if offline is not None:
        return offline
    if spec.target == Target.OFFLINE:
        return Plan(Idle(reason="offline"), Phase.OFFLINE)
    for v in obs.volumes:
        if v.attached_elsewhere:
            return Plan(Blocked(reason=f"volume {v.id} is attached to {v.attached_elsewhere}; not deleting it"),
                        Phase.BLOCKED)
    for v in obs.volumes:
        if v.state == AVAILABLE or v.state == ERROR:
            return Plan(DeleteVolume(volume_id=v.id, reason="target is delete"), Phase.DELETING)
    pending = [v.id for v in obs.volumes if v.state in (CREATING, DELETING)]
    if pending:
        return Plan(Wait(reason=f"waiting for {', '.join(pending)}"), Phase.DELETING)
    return Plan(Idle(reason="deleted"), Phase.DELETED)
