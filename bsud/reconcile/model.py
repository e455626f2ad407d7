"""Plain data the planner works on: what was observed of a drive, and the actions it can ask for.

No I/O here. An observation is rebuilt from the cloud's tags and the host before every
step; an action is a small frozen value with a ``reason`` for the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

from bsud.naming import DELETED, DELETING, EVACUATED, GIB, NEW, REMOVING
from bsud.reconcile.peer import PeerObs, PeerVolume
from bsud.reconcile.phase import PHASES, Direction, Phase
from bsud.storage import LayoutState

__all__ = ["EVACUATED", "GIB", "NEW", "PHASES", "REMOVING", "Direction", "PeerObs", "PeerVolume", "Phase"]  # re-exported for readers and tests


@dataclass(frozen=True)
class VolumeObs:
    id: str
    size_gib: int
    state: str                          # creating | available | in-use | deleting | deleted | error
    bookkeeping: str | None = None      # osc.bsud.state tag: removing | evacuated | new | None
    attached_here: bool = False
    attached_elsewhere: str | None = None  # instance id
    device: str | None = None           # resolved and verified block device
    device_error: str | None = None     # resolution refused (wrong size/serial)
    member: bool = False                # part of the drive's storage (PV of its VG / btrfs device)
    blank: bool = False                 # no signature at all (blkid and wipefs agree)
    own: bool = False                   # carries the drive's signature without being part of it (orphan PV)
    foreign: str | None = None          # what foreign data the gate found on it, if any
    #: The drive's data on it: what taking it out of the drive has to move (btrfs: the used bytes of the chunks
    #: with a stripe on it; lvm: the btrfs data its extents hold). None: not read (not needed, or unreadable).
    live_bytes: int | None = None
    #: Made from a snapshot set for this drive (``from-snapshot-set``): "<set>:<member>/<members>", else None.
    restored_from: str | None = None

    @property
    def size_bytes(self) -> int:
        return self.size_gib * GIB


@dataclass(frozen=True)
class UsageObs:
    """Live space of the mounted drive (btrfs's own accounting, data written but not yet committed included).

    ``used``/``free`` are the data pool's: what is written or promised, and what data can still take.
    Metadata has its own pool: btrfs returns ENOSPC when it runs out, whatever data space is free.
    """

    used: int
    free: int
    size: int
    metadata_used: int = 0
    metadata_free: int = 0

    @property
    def used_percent(self) -> float:
        total = self.used + self.free
        return 100.0 * self.used / total if total else 0.0

    @property
    def metadata_percent(self) -> float:
        total = self.metadata_used + self.metadata_free
        return 100.0 * self.metadata_used / total if total else 0.0


@dataclass(frozen=True)
class Pace:
    """How fast the drive is being written, and how long a grow takes (both in the daemon's memory only)."""

    write_rate: float = 0.0      # bytes/s now: the higher of the last 2 s and 10 s
    recent_peak: float = 0.0     # the highest of those over the last minute
    grow_seconds: float = 60.0   # decision → new capacity usable: learned from this drive's grows
    safety_factor: float = 3.0   # scale up when full sooner than this many grow times
    #: What the drive's devices have been written at (bytes/s: the highest seen by this daemon), 0: not seen yet.
    writeback_rate: float = 0.0
    #: Bytes the page cache can still take before the kernel holds writers to the devices' pace (the dirty
    #: limit less what is dirty or under writeback now); None: not known (a volume is then sized for the rate).
    dirty_room: int | None = None


@dataclass(frozen=True)
class ExportsObs:
    """The drive's exports (all kinds) as the system has them."""

    wanted: int = 0                     # exports the config asks for
    in_sync: bool = True                # exactly those are applied and every server lists them
    present: bool = False               # something of bsud's is exported for the drive (withdraw before unmount)
    detail: str = ""                    # what differs, when not in sync
    servers: tuple[str, ...] = ()       # each kind's server, in words ("nfs: nfsd: 8 threads")
    names: tuple[str, ...] = ()         # each wanted export, named ("nfs:/", "smb:data", "iscsi:<iqn>")
    #: Per export (by name), the I/O counters its server keeps (servers that count: nfs-ganesha).
    stats: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    #: Per client address, the I/O counters of the servers of the drive's exports (over all their exports).
    clients: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    # Set by the engine (from its memory, not the system) once applying the exports failed, while they are still
    # not in sync: the last failure, the exports of the kinds that failed (by name), the failed attempts in a row,
    # when the next attempt is due (epoch seconds), and whether that is still to come (the planner waits).
    error: str = ""
    failing: tuple[str, ...] = ()
    attempts: int = 0
    retry_at: float | None = None
    held: bool = False


@dataclass(frozen=True)
class DriveObs:
    name: str
    volumes: tuple[VolumeObs, ...] = ()
    #: The drive's storage as its layout observed it (members, filesystem, pvmove, what is missing or stale).
    storage: LayoutState = LayoutState()
    mounted: bool = False
    mount_blocked: str | None = None    # the mount path holds something else
    active: bool = False                # the storage is up (the layout's drive_active: what going offline undoes)
    can_grow: bool = False
    read_only: bool = False             # mounted read-write, but the kernel made it read-only (I/O errors)
    #: Its mount-options the mounted filesystem does not show in effect (bsud.config.mount_options).
    options_missing: tuple[str, ...] = ()
    usage: UsageObs | None = None
    pace: Pace = Pace()
    exports: ExportsObs = ExportsObs()
    #: Volumes whose removal failed several times in a row, with why: left in the drive for a while (the engine
    #: remembers it, in memory; a restart of bsud tries again at once).
    removal_held: tuple[tuple[str, str], ...] = ()
    #: The VM refused to take one more volume (its limit): the line that says so and what to do. Nothing is created
    #: or attached for the drive meanwhile (the engine remembers it, in memory, for a while; a reload forgets it).
    attach_refused: str | None = None
    #: A highly available drive: its peer's drive as the cloud lists it (None for any other drive).
    peer: PeerObs | None = None

    @property
    def size_gib(self) -> int:
        """The drive's volumes together (those being deleted left out)."""
        return sum(v.size_gib for v in self.volumes if v.state not in (DELETING, DELETED))


@dataclass(frozen=True)
class Action:
    reason: str = field(default="", compare=False)

    #: Whether carrying it out changes something in the cloud (the shared listing is then dropped).
    changes_cloud: ClassVar[bool] = False

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class VolumeAction(Action):
    volume_id: str = ""


@dataclass(frozen=True)
class CreateVolume(Action):
    size_gib: int = 0

    changes_cloud: ClassVar[bool] = True


@dataclass(frozen=True)
class RestoreVolumes(Action):
    """Make the drive's volumes from the snapshot set ``set_id`` (those not made yet), one per member."""

    set_id: str = ""
    changes_cloud: ClassVar[bool] = True


@dataclass(frozen=True)
class AdoptRestored(Action):
    """Give the filesystem on the volumes made from snapshot set ``set_id`` an identity of this drive's (a new
    fsid, the drive's label): it is a copy of another drive's, which may be mounted on this very VM."""

    set_id: str = ""


@dataclass(frozen=True)
class AttachVolume(VolumeAction):
    changes_cloud: ClassVar[bool] = True


@dataclass(frozen=True)
class CreatePeerVolume(Action):
    """A highly available drive's Primary makes a volume for its peer's drive (tagged with that drive's name), so
    that both nodes' LVs grow alike; the peer's bsud adds it to its LV."""

    peer_drive: str = ""
    size_gib: int = 0

    changes_cloud: ClassVar[bool] = True


@dataclass(frozen=True)
class AttachPeerVolume(VolumeAction):
    """…and attaches it to the peer's VM, whose bsud hears of it from its host at once (a block device event)."""

    peer_drive: str = ""
    instance_id: str = ""

    changes_cloud: ClassVar[bool] = True


@dataclass(frozen=True)
class ResizeReplica(Action):
    """``drbdadm resize`` on the Primary once both nodes' LVs have grown (the filesystem is grown next)."""

    assume_peer_has_space: bool = False


@dataclass(frozen=True)
class DetachVolume(VolumeAction):
    changes_cloud: ClassVar[bool] = True


@dataclass(frozen=True)
class DeleteVolume(VolumeAction):
    changes_cloud: ClassVar[bool] = True


@dataclass(frozen=True)
class RetireVolume(VolumeAction):
    """Detach and delete a volume out of the drive, after checking (attached here) that it is blank."""

    changes_cloud: ClassVar[bool] = True


@dataclass(frozen=True)
class MarkVolume(VolumeAction):
    """Set the bookkeeping tag (removing / evacuated / new; empty: no mark)."""

    value: str = ""

    changes_cloud: ClassVar[bool] = True


@dataclass(frozen=True)
class Join(VolumeAction):
    pass


@dataclass(frozen=True)
class MakeFilesystem(VolumeAction):
    pass


@dataclass(frozen=True)
class RemoveFromDrive(VolumeAction):
    keep_bytes: int | None = None
    live_bytes: int | None = None    # the drive's data on it when the step was planned (logged: what has to move)


@dataclass(frozen=True)
class Activate(Action):
    pass


@dataclass(frozen=True)
class Deactivate(Action):
    pass


@dataclass(frozen=True)
class Mount(Action):
    pass


@dataclass(frozen=True)
class Refresh(Action):
    """Reload the drive's device-mapper tables onto its devices as they are now (a volume came back)."""


@dataclass(frozen=True)
class Remount(Action):
    """Unmount and mount again a filesystem the kernel made read-only after I/O errors."""


@dataclass(frozen=True)
class ApplyMountOptions(Action):
    """``mount -o remount`` with the drive's mount-options: the mounted filesystem does not show them all."""


@dataclass(frozen=True)
class Unmount(Action):
    pass


@dataclass(frozen=True)
class ApplyExports(Action):
    """Make the system export exactly the drive's configured exports (each kind's file transaction)."""


@dataclass(frozen=True)
class WithdrawExports(Action):
    """Remove every export of the drive (before an unmount: an export never keeps a drive busy, and an unmounted
    drive's empty directory is never exported)."""


@dataclass(frozen=True)
class Grow(Action):
    pass


@dataclass(frozen=True)
class Wait(Action):
    """Nothing to do until something outside changes (a volume being created, a device appearing)."""


@dataclass(frozen=True)
class Blocked(Action):
    """Cannot go on without a person: the reason says what to do."""


@dataclass(frozen=True)
class Idle(Action):
    """The drive is where its target wants it."""


class Outcome(Enum):
    """What carrying out an action did. A failure is an exception instead, retried after the wait ``bsud.retry``
    gives its kind (temporary, throttled, permanent, internal); none parks the drive."""

    CHANGED = "changed"
    UNCHANGED = "unchanged"   # it was already so: planned again, the action has no effect
    PREEMPTED = "preempted"   # a removal's move stopped because the drive needs space: planned again at once


@dataclass(frozen=True)
class ScaleDecision:
    """What the scaling rules decided for a mounted drive, once: the action (None: nothing), which way it scales,
    why (the trigger's reason, or the low used %), and a note when a limit or a burst stops it."""

    action: Action | None = None
    direction: Direction | None = None
    reason: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Plan:
    """The next action, the phase the drive is in meanwhile, notes for the operator, and — for a step of a scaling
    decision — which way it scales (decided with the action, never read back from the phase)."""

    action: Action
    phase: Phase
    notes: tuple[str, ...] = ()
    direction: Direction | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "phase", Phase(self.phase))
        except ValueError:
            raise ValueError(f"unknown phase {self.phase!r}; add it to Phase") from None
