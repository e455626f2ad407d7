"""Putting a drive's storage together, per layout: pure functions the planner calls through :data:`ASSEMBLY`.

Each takes what was observed (the drive, its member volumes, its attached blank-or-own volumes) and returns the
step that brings the drive closer to a filesystem ready to mount, or None when there is nothing to assemble. A new
layout adds one function here and one line in :data:`ASSEMBLY` (and its class in ``bsud.host.layouts``).
"""

from __future__ import annotations

from collections.abc import Callable

from bsud.config.catalogue import Layout
from bsud.reconcile.model import (
    Action,
    Activate,
    Blocked,
    DriveObs,
    Join,
    MakeFilesystem,
    Phase,
    VolumeObs,
    Wait,
)

#: (action, phase), or None: nothing to assemble, go on to mounting.
Step = tuple[Action, Phase] | None

NOTHING_YET = (Wait(reason="nothing to build the filesystem on yet"), Phase.ASSEMBLING)


def assemble_lvm(obs: DriveObs, members: list[VolumeObs], fresh: list[VolumeObs]) -> Step:
    """PVs → VG → LV → btrfs on the LV, each resumed where it stopped."""
    if members and obs.storage.lv_missing:
        return MakeFilesystem(reason="the drive's VG has no LV yet (stopped between vgcreate and lvcreate): "
                                     "creating it, then its filesystem"), Phase.ASSEMBLING
    if members and not obs.active:
        return Activate(reason="the drive's storage is not active"), Phase.ASSEMBLING
    if obs.storage.has_filesystem:
        return None
    if fresh:
        return Join(volume_id=fresh[0].id, reason=f"{fresh[0].id} is not a PV of the drive yet"), Phase.ASSEMBLING
    if members:
        return MakeFilesystem(reason="the drive's LV has no filesystem yet"), Phase.ASSEMBLING
    return NOTHING_YET


def assemble_btrfs(obs: DriveObs, members: list[VolumeObs], fresh: list[VolumeObs]) -> Step:
    """btrfs made on the first volume; the others are added once it is mounted."""
    if obs.storage.has_filesystem:
        return None
    if members:
        return Blocked(reason="the drive's btrfs devices are incomplete or unreadable"), Phase.BLOCKED
    if fresh:
        return MakeFilesystem(volume_id=fresh[0].id, reason=f"no filesystem yet: making it on {fresh[0].id}"), \
            Phase.ASSEMBLING
    return NOTHING_YET


ASSEMBLY: dict[Layout, Callable[[DriveObs, list[VolumeObs], list[VolumeObs]], Step]] = {
    Layout.LVM: assemble_lvm,
    Layout.BTRFS: assemble_btrfs,
}
