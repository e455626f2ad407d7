"""How a drive's volumes become one filesystem: the ``lvm`` and ``btrfs`` layouts.

Both offer the same idempotent steps — observe, join a device (behind the safety gate),
make the filesystem, mount/unmount, grow, remove a device with its data moved off,
activate/deactivate, usage. Each step looks at the current state first and does only
what is missing, so a step interrupted at any point (kill -9) is finished by running it
again.

- ``lvm``: PV per volume, VG named after the drive, one LV ``bsud`` of 100%, btrfs on the
  LV — the on-disk layout of the original bsud, so its drives are adopted as they are.
- ``btrfs``: btrfs spans the volumes itself (``device add`` / ``device remove``); needs no
  device-mapper.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from bsud.config import LV_NAME, Layout
from bsud.errors import BsudError
from bsud.host import mounts
from bsud.host.btrfs import Btrfs, Filesystem, label_for
from bsud.host.devices import Resolution
from bsud.host.lvm import Lvm
from bsud.host.safety import BLANK, ForeignDevice, Probe, admit, probe
from bsud.host.space import Space, SpaceReader
from bsud.logs import get_logger
from bsud.runner import Runner

log = get_logger("bsud.host.layouts")

MIB = 1024**2


class LayoutError(BsudError):
    pass


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
    fs_uuid: str | None = None
    details: dict[str, object] = field(default_factory=dict)


class StorageLayout(ABC):
    kind: Layout

    def __init__(self, drive: str, runner: Runner) -> None:
        self.drive = drive
        self.runner = runner
        self.btrfs = Btrfs(runner)
        self.space = SpaceReader(self.btrfs)
        self.label = label_for(drive)
        self._size_hint: int | None = None

    # -- observation ---------------------------------------------------------------------------

    @abstractmethod
    def observe(self, devices: list[str]) -> LayoutState:
        """The drive's storage as it is now on ``devices`` (its volumes' resolved devices)."""

    @abstractmethod
    def is_own(self, found: Probe) -> bool:
        """Whether a device with a signature is already this drive's."""

    def usage(self, mount_point: str) -> Space:
        """Live space, the filesystem's exact size read with ``btrfs filesystem show`` (a full observation)."""
        fs = self.btrfs.show(mount_point)
        self._size_hint = sum(d.size for d in fs.devices) if fs and fs.devices else None
        return self.space.read(mount_point, self._size_hint)

    def live_usage(self, mount_point: str) -> Space:
        """Live space from sysfs file reads alone, for sampling between full observations."""
        return self.space.read(mount_point, self._size_hint)

    # -- steps ----------------------------------------------------------------------------------

    def gate(self, resolution: Resolution, volume_tags: dict[str, str]) -> str:
        """The safety gate: BLANK or OWN, else ForeignDevice. Run before anything writes a device."""
        return admit(resolution, volume_tags, self.drive, probe(self.runner, resolution.device), self.is_own)

    @abstractmethod
    def join(self, resolution: Resolution, volume_tags: dict[str, str], mount_point: str | None) -> None:
        """Make a (gate-checked) device part of the drive's storage."""

    @abstractmethod
    def ensure_filesystem(self, resolution: Resolution | None = None,
                          volume_tags: dict[str, str] | None = None) -> None:
        """Make the drive's btrfs if it does not exist yet."""

    @abstractmethod
    def mount_source(self, devices: list[str]) -> str:
        """The device to mount."""

    def mount(self, devices: list[str], mount_point: str) -> None:
        existing = mounts.mount_at(mount_point)
        source = self.mount_source(devices)
        if existing is not None:
            if self.is_our_mount(existing, devices):
                return
            raise mounts.MountError(f"{mount_point} already holds {existing.fstype} from {existing.source}, "
                                    f"not drive {self.drive!r}; unmount it or change mount-path")
        self.activate(devices)
        mounts.mount(self.runner, source, mount_point)

    def is_our_mount(self, entry: mounts.MountEntry, devices: list[str]) -> bool:
        if entry.fstype != "btrfs":
            return False
        fs = self.btrfs.show(entry.mount_point)
        return (fs is not None and fs.label == self.label) or self._fs_on(fs, devices)

    def _fs_on(self, fs: Filesystem | None, devices: list[str]) -> bool:
        if fs is None:
            return False
        paths = {os.path.realpath(d.path) for d in fs.devices}
        return bool(paths & {os.path.realpath(d) for d in self._fs_devices(devices)})

    def _fs_devices(self, devices: list[str]) -> list[str]:
        return devices

    def unmount(self, mount_point: str) -> None:
        mounts.unmount(self.runner, mount_point)

    @abstractmethod
    def can_grow(self, mount_point: str) -> bool:
        """Whether :meth:`grow` has space to give."""

    @abstractmethod
    def grow(self, mount_point: str) -> bool:
        """Give the filesystem all the space of its devices; True when something grew."""

    @abstractmethod
    def remove_device(self, device: str, mount_point: str, keep_bytes: int | None = None) -> None:
        """Move data off ``device`` and take it out of the drive (resumable)."""

    @abstractmethod
    def activate(self, devices: list[str]) -> None: ...

    def recover(self) -> None:
        """At start: undo what a kill mid-command can leave behind on the host (nothing, by default)."""

    def refresh(self, devices: list[str]) -> None:
        """Point the drive's mappings at its devices as they are now (nothing to do, by default)."""

    @abstractmethod
    def deactivate(self, devices: list[str]) -> None: ...

    def shrink(self, mount_point: str, devid: int, size_bytes: int) -> None:
        """Shrink one btrfs device to ``size_bytes`` (relocates data; ENOSPC when it does not fit)."""
        self.btrfs.resize(mount_point, devid, size_bytes)


class LvmLayout(StorageLayout):
    kind = Layout.LVM

    def __init__(self, drive: str, runner: Runner) -> None:
        super().__init__(drive, runner)
        self.lvm = Lvm(runner)
        self.vg = drive
        self.lv_path = f"/dev/{self.vg}/{LV_NAME}"

    def is_own(self, found: Probe) -> bool:
        if found.type != "LVM2_member":
            return False
        pvs = self.lvm.pvs([found.device])
        # A PV in this drive's VG, or an orphan PV (bsud was stopped between pvcreate and
        # vgcreate/vgextend): a PV outside any VG holds no data.
        return bool(pvs) and pvs[0].vg_name in (self.vg, "")

    def observe(self, devices: list[str]) -> LayoutState:
        pvs = self.lvm.pvs(devices) if devices else []
        members = frozenset(pv.name for pv in pvs if pv.vg_name == self.vg)
        group = self.lvm.vg(self.vg)
        lvs = self.lvm.lvs(self.vg) if group else []
        lv = next((x for x in lvs if x.name == LV_NAME), None)
        moving = any(x.is_pvmove for x in lvs)
        has_fs = False
        uuid = None
        stale: list[str] = []
        if lv is not None and lv.active and os.path.exists(self.lv_path):
            found = probe(self.runner, self.lv_path)
            has_fs = found.type == "btrfs"
            uuid = found.blkid.get("UUID")
            stale = self.lvm.stale_devices(self.lv_path)
        missing = None
        if group is not None and group.missing_pv_count:
            uuids = self.lvm.missing_pvs(self.vg)
            missing = (f"VG {self.vg} misses {group.missing_pv_count} of its {group.pv_count} PVs"
                       + (f" (PV UUID {', '.join(uuids)})" if uuids else ""))
        return LayoutState(
            members=members, has_filesystem=has_fs, fs_device=self.lv_path if lv else None,
            active=bool(lv and lv.active), move_in_progress=moving, missing=missing, stale=tuple(stale),
            fs_uuid=uuid, details={"vg": group, "lv": lv, "pvs": pvs},
        )

    def join(self, resolution: Resolution, volume_tags: dict[str, str], mount_point: str | None) -> None:
        dev = resolution.device
        verdict = self.gate(resolution, volume_tags)
        if verdict == BLANK:
            self.lvm.pvcreate(dev)
        pv = self.lvm.pvs([dev])
        if not pv:
            raise LayoutError(f"{dev}: pvcreate reported success but no PV is visible")
        if pv[0].vg_name == "":
            if self.lvm.vg(self.vg) is None:
                if os.path.lexists(f"/dev/{self.vg}"):
                    raise LayoutError(f"drive {self.drive!r}: /dev/{self.vg} exists on this machine, so LVM cannot "
                                      "name a VG after the drive; rename the drive (its volumes' tag too)")
                self.lvm.vgcreate(self.vg, [dev])
            else:
                self.lvm.vgextend(self.vg, dev)
        elif pv[0].vg_name != self.vg:
            raise ForeignDevice(f"{dev} is a PV of VG {pv[0].vg_name!r}, not of drive {self.drive!r}")
        if self.lvm.lv(self.vg) is None:
            self.lvm.lvcreate_full(self.vg)

    def ensure_filesystem(self, resolution: Resolution | None = None,
                          volume_tags: dict[str, str] | None = None) -> None:
        if self.lvm.vg(self.vg) is None:
            raise LayoutError(f"drive {self.drive!r}: no VG {self.vg} to put the filesystem on")
        lv = self.lvm.lv(self.vg)
        if lv is None:
            # Stopped between vgcreate and lvcreate: a VG of the drive's volumes with no LV holds no data.
            self.lvm.lvcreate_full(self.vg)
            lv = self.lvm.lv(self.vg)
        if lv is None:
            raise LayoutError(f"drive {self.drive!r}: lvcreate reported success but {self.lv_path} is not there")
        if not lv.active:
            self.lvm.vgchange(self.vg, True)
        found = probe(self.runner, self.lv_path)
        if found.blank:
            self.btrfs.mkfs(self.lv_path, self.label)
        elif found.type != "btrfs":
            raise ForeignDevice(f"{self.lv_path} holds {found.describe()}, not btrfs; bsud will not format it")

    def mount_source(self, devices: list[str]) -> str:
        return self.lv_path

    def _fs_devices(self, devices: list[str]) -> list[str]:
        return [self.lv_path]

    def _register(self, devices: list[str]) -> None:
        """With LVM's devices file in use, list the drive's (verified) devices in it so LVM sees them."""
        if self.lvm.devices_file_enabled():
            for dev in devices:
                if not self.lvm.devices_file_has(dev):
                    self.lvm.devices_file_add(dev)

    def activate(self, devices: list[str]) -> None:
        self._register(devices)
        lv = self.lvm.lv(self.vg)
        if lv is not None and not lv.active:
            self.lvm.vgchange(self.vg, True)

    def refresh(self, devices: list[str]) -> None:
        """A volume unplugged under the active LV and plugged again is a new device to the kernel: reload the
        LV's table so that its extents map to it again (``lvchange --refresh``)."""
        self._register(devices)
        stale = self.lvm.stale_devices(self.lv_path)
        log.warning("reloading the LV's table onto the drive's devices", drive=self.drive, gone=stale)
        self.lvm.refresh(self.vg)
        left = self.lvm.stale_devices(self.lv_path)
        if left:
            raise LayoutError(f"drive {self.drive!r}: {self.lv_path} still maps to {', '.join(left)} after "
                              "lvchange --refresh", temporary=True)

    def recover(self) -> None:
        """A dm device of the drive left suspended (bsud's lvm child killed mid-lvreduce/pvmove) blocks every
        I/O to it: resume it. Resuming makes live whatever table lvm had loaded, which may be ahead of the
        metadata it did not commit: the LV's table is then reloaded from the metadata (``lvchange --refresh``),
        unless a pvmove is to be resumed (``pvmove`` itself does that, at the next Grow)."""
        resumed = self.lvm.suspended(self.vg)
        for name in resumed:
            log.warning("resuming a device-mapper device of the drive left suspended", drive=self.drive,
                        device=name)
            self.lvm.resume(name)
        if resumed and self.lvm.lv(self.vg) is not None and not self.lvm.moves_in_progress(self.vg):
            self.lvm.refresh(self.vg)

    def deactivate(self, devices: list[str]) -> None:
        if self.lvm.vg(self.vg) is not None:
            self.lvm.vgchange(self.vg, False)

    def can_grow(self, mount_point: str) -> bool:
        group = self.lvm.vg(self.vg)
        if group is not None and group.free >= max(group.extent_size, 1):
            return True
        return self.btrfs.usage(mount_point).slack > 0

    def grow(self, mount_point: str) -> bool:
        if self.lvm.moves_in_progress(self.vg):
            log.info("resuming an interrupted pvmove", drive=self.drive)
            self.lvm.pvmove()
        grew = self.lvm.lvextend_full(self.vg)
        usage = self.btrfs.usage(mount_point)
        if usage.slack > 0 or grew:
            self.btrfs.resize(mount_point, 1, "max")
            return True
        return grew

    def remove_device(self, device: str, mount_point: str, keep_bytes: int | None = None) -> None:
        """btrfs shrink → lvreduce → pvmove → vgreduce → pvremove → lvextend → btrfs grow, each step skipped
        when already done, so a run interrupted anywhere is completed by running it again."""
        group = self.lvm.vg(self.vg)
        pv = next((p for p in self.lvm.pvs([device]) if p.vg_name == self.vg), None)
        if group is None:
            raise LayoutError(f"drive {self.drive!r}: VG {self.vg} not found")
        if self.lvm.moves_in_progress(self.vg):
            log.info("resuming an interrupted pvmove", drive=self.drive)
            self.lvm.pvmove()
        if pv is not None:
            others = [p for p in self.lvm.pvs() if p.vg_name == self.vg and p.name != device]
            if not others:
                raise LayoutError(f"drive {self.drive!r}: {device} is its only PV; cannot remove it")
            extent = max(group.extent_size, 1)
            room = sum(p.size for p in others)
            lv_target = (room // extent) * extent
            fs_target = lv_target - extent  # margin: LVM rounds sizes up to whole extents
            if keep_bytes is not None:
                fs_target = min(fs_target, max(keep_bytes, 256 * MIB))
                lv_target = min(lv_target, ((fs_target + 2 * extent - 1) // extent) * extent)
            lv = self.lvm.lv(self.vg)
            if lv is None:
                raise LayoutError(f"drive {self.drive!r}: LV {self.vg}/{LV_NAME} not found")
            if lv.size > lv_target:
                fs = self.btrfs.show(mount_point)
                fs_size = fs.devices[0].size if fs and fs.devices else lv.size
                if fs_size > fs_target:
                    self.btrfs.resize(mount_point, 1, fs_target)
                fs = self.btrfs.show(mount_point)
                if not fs or not fs.devices or fs.devices[0].size > lv_target:
                    raise LayoutError(f"drive {self.drive!r}: btrfs did not shrink below {lv_target} bytes; "
                                      "not reducing the LV")
                self.lvm.lvreduce(self.vg, lv_target)
            pv = next((p for p in self.lvm.pvs([device]) if p.vg_name == self.vg), None)
            if pv is not None and pv.size - pv.free > 0:
                self.lvm.pvmove(device)
            if pv is not None:
                self.lvm.vgreduce(self.vg, device)
        if self.lvm.pvs([device]):
            self.lvm.pvremove(device)
        self.grow(mount_point)


class BtrfsLayout(StorageLayout):
    kind = Layout.BTRFS

    def is_own(self, found: Probe) -> bool:
        return found.type == "btrfs" and found.blkid.get("LABEL") == self.label

    def _probe_all(self, devices: list[str]) -> dict[str, Probe]:
        return {dev: probe(self.runner, dev) for dev in devices}

    def observe(self, devices: list[str]) -> LayoutState:
        probes = self._probe_all(devices)
        own = {d: p for d, p in probes.items() if self.is_own(p)}
        uuids = {p.blkid.get("UUID") for p in own.values()}
        if len(uuids) > 1:
            raise LayoutError(f"drive {self.drive!r}: its volumes hold {len(uuids)} different btrfs filesystems "
                              f"labelled {self.label!r} ({', '.join(sorted(u or '?' for u in uuids))}); "
                              "resolve by hand")
        members = frozenset(own)
        uuid = next(iter(uuids)) if uuids else None
        missing = None
        if uuid:
            fs = self.btrfs.show(uuid)
            if fs is not None and fs.missing:
                missing = f"btrfs {uuid} misses some of its devices ({len(fs.devices)} present)"
        return LayoutState(
            members=members, has_filesystem=bool(own), fs_device=min(members) if members else None,
            active=bool(own), missing=missing, fs_uuid=uuid, details={"probes": probes},
        )

    def join(self, resolution: Resolution, volume_tags: dict[str, str], mount_point: str | None) -> None:
        dev = resolution.device
        verdict = self.gate(resolution, volume_tags)
        if verdict != BLANK:
            return  # already one of ours
        if mount_point is None or mounts.mount_at(mount_point) is None:
            raise LayoutError(f"drive {self.drive!r}: mount the filesystem before adding {dev}", temporary=True)
        self.btrfs.device_add(dev, mount_point)

    def ensure_filesystem(self, resolution: Resolution | None = None,
                          volume_tags: dict[str, str] | None = None) -> None:
        if resolution is None or volume_tags is None:
            raise LayoutError(f"drive {self.drive!r}: no volume to make the filesystem on")
        if self.gate(resolution, volume_tags) == BLANK:
            self.btrfs.mkfs(resolution.device, self.label)

    def mount_source(self, devices: list[str]) -> str:
        state = self.observe(devices)
        if state.fs_device is None:
            raise LayoutError(f"drive {self.drive!r}: none of its devices holds its filesystem")
        return state.fs_device

    def activate(self, devices: list[str]) -> None:
        self.btrfs.scan(devices)

    def deactivate(self, devices: list[str]) -> None:
        for dev in devices:
            self.btrfs.forget(dev)

    def can_grow(self, mount_point: str) -> bool:
        fs = self.btrfs.show(mount_point)
        return any((_device_bytes(d.path) or 0) > d.size for d in (fs.devices if fs else ()))

    def grow(self, mount_point: str) -> bool:
        fs = self.btrfs.show(mount_point)
        grew = False
        for dev in fs.devices if fs else ():
            real = _device_bytes(dev.path)
            if real and real > dev.size:
                self.btrfs.resize(mount_point, dev.devid, "max")
                grew = True
        return grew

    def remove_device(self, device: str, mount_point: str, keep_bytes: int | None = None) -> None:
        fs = self.btrfs.show(mount_point)
        if fs is None or fs.devid_of(device) is None:
            return  # already out (device remove wipes its superblock)
        if len(fs.devices) < 2:
            raise LayoutError(f"drive {self.drive!r}: {device} is its only device; cannot remove it")
        self.btrfs.device_remove(device, mount_point)


def _device_bytes(path: str) -> int | None:
    name = os.path.basename(os.path.realpath(path))
    try:
        with open(f"/sys/class/block/{name}/size") as fh:
            return int(fh.read().strip()) * 512
    except (OSError, ValueError):
        return None


def make_layout(kind: Layout, drive: str, runner: Runner) -> StorageLayout:
    return LvmLayout(drive, runner) if kind == Layout.LVM else BtrfsLayout(drive, runner)
