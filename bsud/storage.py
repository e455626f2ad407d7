"""What the host shows of a drive's storage: pure data that a layout (``bsud.host.layouts``) fills in when it
observes a drive and that the planner reads, held whole in ``DriveObs.storage``. No I/O."""

from __future__ import annotations

from dataclasses import dataclass

#: DRBD's words for a connected resource, an up-to-date disk, the Primary.
CONNECTED, STANDALONE, UP_TO_DATE, PRIMARY = "Connected", "StandAlone", "UpToDate", "Primary"
SECTOR = 512


def internal_md_bytes(backing_bytes: int) -> int:
    """DRBD's internal meta-data at the end of a backing device of ``backing_bytes`` (DRBD's user guide, "Meta data
    size", one peer: 72 sectors, and 8 sectors of bitmap per 2^18 data sectors, rounded up)."""
    sectors = backing_bytes // SECTOR
    return (-(-sectors // 2**18) * 8 + 72) * SECTOR


def usable_bytes(backing_bytes: int) -> int:
    """What a DRBD device on a backing device of that size offers at most (4 KiB aligned)."""
    return max(0, (backing_bytes - internal_md_bytes(backing_bytes)) // 4096 * 4096)


@dataclass(frozen=True)
class Replication:
    """A highly available drive's DRBD resource on this node (its backing device is the drive's LV)."""

    resource: str
    device: str | None = None          # /dev/drbd1000
    configured: bool = True            # drbdadm knows the resource on this node (its disk the drive's LV)
    up: bool = False                   # the resource is up on this node (attached to the LV)
    role: str = ""                     # Primary | Secondary
    peer_role: str = ""                # the peer's, as this node last heard it ('' or Unknown while disconnected)
    connection: str = ""               # Connected, WFConnection, StandAlone, SyncSource…
    disk: str = ""                     # UpToDate, Inconsistent, Outdated, Diskless…
    peer_disk: str = ""
    size: int = 0                      # the DRBD device, bytes
    backing_size: int = 0              # the LV under it, bytes
    #: Why the resource cannot be used for this drive (not configured here, its disk is not the drive's LV).
    error: str | None = None

    @property
    def primary(self) -> bool:
        return self.up and self.role == PRIMARY

    @property
    def connected(self) -> bool:
        return self.connection == CONNECTED

    @property
    def room(self) -> int:
        """Bytes the DRBD device could still grow by into this node's LV (after both LVs grew: ``drbdadm
        resize``); under 1 MiB counts as none (DRBD's own rounding)."""
        room = usable_bytes(self.backing_size) - self.size if self.up and self.size else 0
        return room if room >= 2**20 else 0


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
    #: lvm: the label of the btrfs on the active LV ("" for none; None when not read): a drive made from a snapshot
    #: set is the drive's own only once its filesystem carries the drive's label (the last step of the adoption).
    fs_label: str | None = None
    #: A highly available drive: its DRBD resource (None for any other drive).
    replication: Replication | None = None
