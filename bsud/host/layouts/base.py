"""What every layout offers, and what it tells of a drive's storage (see the package's docstring)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from bsud.config.catalogue import Layout
from bsud.errors import BsudError
from bsud.host import mounts
from bsud.host.devices import Resolution
from bsud.host.filesystem import DriveFilesystem
from bsud.host.preempt import Preemption
from bsud.host.safety import Probe, admit, probe
from bsud.host.space import Space
from bsud.runner import Runner
from bsud.storage import LayoutState as LayoutState  # the layouts build it; defined below the host layer


class LayoutError(BsudError):
    pass


class StorageLayout(ABC):
    kind: Layout
    #: The commands this layout runs (the daemon checks them all at start, naming each one's package).
    tools: ClassVar[tuple[str, ...]] = ("blkid", "wipefs", "mount", "umount", *DriveFilesystem.tools)

    def __init__(self, drive: str, runner: Runner) -> None:
        self.drive = drive
        self.runner = runner
        #: The drive's removal as the sampler can stop it: a burst pre-empts a removal (see bsud.host.preempt).
        self.preemption = Preemption(drive)
        self.fs = DriveFilesystem(drive, runner, self.preemption)

    # -- observation ---------------------------------------------------------------------------

    @abstractmethod
    def observe(self, devices: list[str]) -> LayoutState:
        """The drive's storage as it is now on ``devices`` (its volumes' resolved devices)."""

    def drive_active(self, state: LayoutState, mounted: bool) -> bool:
        """Whether the drive's storage is up (what going offline must undo before detaching): mounted, by
        default."""
        return mounted

    @abstractmethod
    def is_own(self, found: Probe) -> bool:
        """Whether a device with a signature is already this drive's."""

    def usage(self, mount_point: str) -> Space:
        """Live space, the filesystem's exact size read with ``btrfs filesystem show`` (a full observation)."""
        return self.fs.usage(mount_point)

    def live_bytes(self, mount_point: str, devices: list[str]) -> dict[str, int] | None:
        """The drive's live data on each of ``devices`` (by real path): what taking it out would have to move.
        None when it cannot be told (the planner then chooses by size)."""
        return None

    def live_usage(self, mount_point: str) -> Space:
        """Live space from sysfs file reads alone, for sampling between full observations (while a removal's move
        runs, without the capacity it takes away)."""
        return self.fs.live_usage(mount_point)

    def live_fingerprint(self, mount_point: str) -> tuple[object, ...] | None:
        """What :meth:`live_usage` is made of, read in a few microseconds (equal: the same space); None when
        sysfs cannot say."""
        return self.fs.live_fingerprint(mount_point)

    # -- steps ----------------------------------------------------------------------------------

    def gate(self, resolution: Resolution, volume_tags: dict[str, str]) -> str:
        """The safety gate: BLANK or OWN, else ForeignDevice. Run before anything writes a device."""
        return admit(resolution, volume_tags, self.drive, probe(self.runner, resolution.device), self.is_own)

    @abstractmethod
    def join(self, resolution: Resolution, volume_tags: dict[str, str], mount_point: str | None) -> bool:
        """Make a (gate-checked) device part of the drive's storage; on a drive mounted at ``mount_point`` its
        space is usable when this returns. False when it already was (nothing done)."""

    @abstractmethod
    def ensure_filesystem(self, resolution: Resolution | None = None,
                          volume_tags: dict[str, str] | None = None) -> bool:
        """Make the drive's filesystem if it does not exist yet; False when it did (nothing done)."""

    @abstractmethod
    def mount_source(self, devices: list[str]) -> str:
        """The device to mount."""

    def mount(self, devices: list[str], mount_point: str, options: tuple[str, ...] = ()) -> bool:
        """Mount the drive's filesystem on ``mount_point`` with ``options`` (its mount-options); False when it
        already is."""
        existing = mounts.mount_at(mount_point)
        source = self.mount_source(devices)
        if existing is not None:
            if self.is_our_mount(existing, devices):
                return False
            raise mounts.MountError(f"{mount_point} already holds {existing.fstype} from {existing.source}, "
                                    f"not drive {self.drive!r}; unmount it or change mount-path")
        self.activate(devices)
        mounts.mount(self.runner, source, mount_point, ",".join(options) or None)
        return True

    def is_our_mount(self, entry: mounts.MountEntry, devices: list[str]) -> bool:
        return self.fs.is_mounted_from(entry, self._fs_devices(devices))

    def _fs_devices(self, devices: list[str]) -> list[str]:
        """The devices the filesystem sits on, given the drive's volumes' devices."""
        return devices

    def unmount(self, mount_point: str) -> bool:
        """Unmount; False when nothing was mounted there."""
        if mounts.mount_at(mount_point) is None:
            return False
        mounts.unmount(self.runner, mount_point)
        return True

    @abstractmethod
    def can_grow(self, mount_point: str) -> bool:
        """Whether :meth:`grow` has space to give."""

    @abstractmethod
    def grow(self, mount_point: str) -> bool:
        """Give the filesystem all the space of its devices; True when something grew."""

    @abstractmethod
    def remove_device(self, device: str, mount_point: str, keep_bytes: int | None = None) -> bool:
        """Move data off ``device`` and take it out of the drive (resumable); False when it already was out. A
        burst stops it: :class:`~bsud.host.preempt.Preempted`, the drive consistent and its removal resumable."""

    @abstractmethod
    def activate(self, devices: list[str]) -> bool:
        """Make the drive's storage ready to mount; False when it already was."""

    def recover(self) -> None:
        """At start: undo what a kill mid-command can leave behind on the host (nothing, by default)."""

    def refresh(self, devices: list[str]) -> bool:
        """Point the drive's mappings at its devices as they are now; False when they already were (nothing to do,
        by default)."""
        return False

    @abstractmethod
    def deactivate(self, devices: list[str]) -> bool:
        """Undo :meth:`activate` (before the volumes are detached); False when nothing was active."""
