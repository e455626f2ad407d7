"""What the host shows of a drive's storage: pure data that a layout (``bsud.host.layouts``) fills in when it
observes a drive and that the planner reads, held whole in ``DriveObs.storage``. No I/O."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayoutState:
    """What the host shows of a drive's storage, given its volumes' devices."""

    members: frozenset[str] = frozenset()        # devices already part of the drive
    has_filesystem: bool = False                 # a btrfs of this drive exists (maybe unmounted)
    fs_device: str | None = None                 # what to mount
    active: bool = False                         # LV active / btrfs devices known to the kernel
    move_in_progress: bool = False               # an interrupted pvmove to resume
    missing: str | None = None                   # what of the drive's storage is absent, in words
    stale: tuple[str, ...] = ()                  # devices still mapped although they went away (lvm)
    lv_missing: bool = False                     # lvm: PVs in the drive's VG but no LV (stopped before lvcreate)
