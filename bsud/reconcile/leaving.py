"""A volume leaving a drive, as the planner sees it: a removal under way (abandoned, or its data moved off) and
an evacuated volume (verified blank before it is deleted, or taken back). Pure; also the shape of a step of the
online plan (:data:`Step`), which these and the planner return.
"""

from __future__ import annotations

from bsud.config import DriveConfig, Layout
from bsud.naming import AVAILABLE
from bsud.reconcile.model import (EVACUATED, REMOVING, Action, AttachVolume, Blocked, Direction, DriveObs,
                                  Grow, MarkVolume, Phase, RemoveFromDrive, RetireVolume, VolumeObs, Wait)
from bsud.reconcile.removal import removal_no_longer_fits, shrink_keep_bytes

#: A step of the online plan: the action, the drive's phase meanwhile, and the direction of a scaling step.
Step = tuple[Action, Phase, Direction | None]


def at(phase: Phase, action: Action) -> Step:
    return action, phase, None


def up(action: Action) -> Step:
    return action, Phase.SCALING_UP, Direction.UP


def down(action: Action) -> Step:
    return action, Phase.SCALING_DOWN, Direction.DOWN


def plan_evacuated(v: VolumeObs) -> Step | None:
    """A volume marked evacuated: verified blank before it is deleted, or taken back when it holds something.

    The original bsud (same tags) re-adds such a volume to its VG when it runs again, and a detached volume may
    have been written elsewhere: nothing is deleted without being attached here and found blank.
    """
    if v.member:
        return at(Phase.ONLINE, MarkVolume(volume_id=v.id, value="", reason=f"{v.id} is part of the drive again: "
                                           f"dropping its '{EVACUATED}' mark"))
    if not v.attached_here:
        if v.state == AVAILABLE:
            return down(AttachVolume(volume_id=v.id, reason=f"{v.id} is out of the drive and detached: attaching "
                                     "it to check it is blank before deleting it"))
        return None
    if v.device_error:
        return at(Phase.BLOCKED, Blocked(reason=v.device_error))
    if v.device is None:
        return down(Wait(reason=f"waiting for the device of {v.id}"))
    if v.blank:
        return down(RetireVolume(volume_id=v.id, reason=f"{v.id} is out of the drive and verifiably blank"))
    if v.own:
        return down(MarkVolume(volume_id=v.id, value=REMOVING, reason=f"{v.id} is marked '{EVACUATED}' but holds "
                               "the drive's signature: finishing its removal first"))
    if v.foreign:
        return at(Phase.BLOCKED, Blocked(reason=f"{v.foreign} (it is marked '{EVACUATED}': bsud will not delete it)"))
    return down(Wait(reason=f"cannot tell what {v.id} holds; not deleting it"))


def plan_removals(spec: DriveConfig, obs: DriveObs, members: list[VolumeObs],
                   removing: list[VolumeObs]) -> Step | None:
    """A removal under way: abandoned (held back, or the drive needs the space), else its data moved off."""
    held = dict(obs.removal_held)
    for v in removing:
        if v.member and v.id in held:
            return down(MarkVolume(volume_id=v.id, value="", reason=f"abandoning the removal of {v.id}: "
                                   f"{held[v.id]}; it stays in the drive"))
        if v.member and obs.usage is not None:
            shrunk_to = shrink_keep_bytes(spec, obs.usage) if spec.layout is Layout.LVM else None  # its keep_bytes
            why = removal_no_longer_fits(spec, obs.usage, obs.pace, members, v, shrunk_to)
            if why and obs.can_grow and not obs.storage.move_in_progress:
                # Space first, the tag after: a stopped move's shrunk filesystem takes back what the drive has now
                # (one step sooner — the burst is writing meanwhile); the abandon is planned again next.
                return up(Grow(reason=f"the filesystem can use more space, and {why}: growing before abandoning "
                                      f"the removal of {v.id}"))
            if why:
                return up(MarkVolume(volume_id=v.id, value="", reason=f"abandoning the removal of {v.id}: {why}; "
                                     "it stays in the drive"))
        if v.member or v.own:
            # own but not a member: an orphan PV left by a stop between vgreduce and pvremove.
            keep = shrink_keep_bytes(spec, obs.usage) if obs.usage else None
            data = f" ({v.live_bytes / 1024**2:.0f} MiB of the drive's data on it)" if v.live_bytes is not None else ""
            return down(RemoveFromDrive(volume_id=v.id, keep_bytes=keep, live_bytes=v.live_bytes,
                                        reason=f"moving data off {v.id} before it leaves the drive{data}"))
    return None
