"""The ``lvm`` layout: PV per volume, VG named after the drive, one LV ``bsud`` of 100%, btrfs on the LV — the
on-disk layout of the original bsud, so its drives are adopted as they are."""

from __future__ import annotations

import os

from bsud.config.catalogue import Layout
from bsud.host import mounts
from bsud.host.devices import Resolution
from bsud.host.btrfs import MIN_DEVICE_BYTES
from bsud.host.chunks import live_in_ranges
from bsud.host.layouts.base import LayoutError, LayoutState, StorageLayout
from bsud.host.lvm import Lvm
from bsud.host.safety import BLANK, ForeignDevice, Probe, probe
from bsud.logs import get_logger
from bsud.naming import LV_NAME, lv_path
from bsud.runner import Runner

log = get_logger("bsud.host.layouts")


class LvmLayout(StorageLayout):
    kind = Layout.LVM
    tools = (*StorageLayout.tools, "lvm", "dmsetup")

    def __init__(self, drive: str, runner: Runner) -> None:
        super().__init__(drive, runner)
        self.lvm = Lvm(runner)
        self.vg = drive
        self.lv_path = lv_path(self.vg)
        #: Off once a refresh left the check unsatisfied: this kernel's holders links cannot be trusted, and a
        #: false alarm must never hold the drive in recovery (it would stop scaling).
        self.stale_check = True

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
        label: str | None = None
        stale: list[str] = []
        if lv is not None and lv.active and os.path.exists(self.lv_path):
            found = probe(self.runner, self.lv_path)
            has_fs = found.type == self.fs.fstype
            label = found.blkid.get("LABEL", "") if has_fs else None
            stale = self.lvm.stale_devices(self.lv_path) if self.stale_check else []
        missing = None
        if group is not None and group.missing_pv_count:
            uuids = self.lvm.missing_pvs(self.vg)
            missing = (f"VG {self.vg} misses {group.missing_pv_count} of its {group.pv_count} PVs"
                       + (f" (PV UUID {', '.join(uuids)})" if uuids else ""))
        elif group is not None and group.pv_count > len(members):
            # A PV on a device no volume of the drive resolves to: its volume was deleted or lost its tag while its
            # device is still here (a detach takes a while to reach the guest). Scaling on the volumes left would
            # count the drive without it — and could add or remove a volume on that false picture.
            others = sorted(pv.name for pv in self.lvm.pvs() if pv.vg_name == self.vg and pv.name not in members)
            missing = (f"VG {self.vg} has {group.pv_count} PVs, {group.pv_count - len(members)} of them on a device "
                       f"of no volume of the drive attached here ({', '.join(others) or '?'})")
        return LayoutState(
            members=members, has_filesystem=has_fs, fs_device=self.lv_path if lv else None,
            active=bool(lv and lv.active), move_in_progress=moving, missing=missing, stale=tuple(stale),
            lv_missing=bool(members) and lv is None, fs_label=label,
        )

    def drive_active(self, state: LayoutState, mounted: bool) -> bool:
        """The LV is active (deactivated before the volumes are detached)."""
        return state.active

    def join(self, resolution: Resolution, volume_tags: dict[str, str], mount_point: str | None) -> bool:
        dev = resolution.device
        verdict = self.gate(resolution, volume_tags)
        changed = verdict == BLANK
        if changed:
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
            changed = True
        elif pv[0].vg_name != self.vg:
            raise ForeignDevice(f"{dev} is a PV of VG {pv[0].vg_name!r}, not of drive {self.drive!r}")
        if self.lvm.lv(self.vg) is None:
            self.lvm.lvcreate_full(self.vg)
            changed = True
        elif mount_point is not None and (entry := mounts.mount_at(mount_point)) and self.is_our_mount(entry, []):
            # A volume joined to a drive in use is put to use at once, as the btrfs layout's device add does:
            # the next observation would plan Grow anyway, and a drive filling up cannot wait for it.
            changed |= self.grow(mount_point)
        return changed

    def ensure_filesystem(self, resolution: Resolution | None = None,
                          volume_tags: dict[str, str] | None = None) -> bool:
        if self.lvm.vg(self.vg) is None:
            raise LayoutError(f"drive {self.drive!r}: no VG {self.vg} to put the filesystem on")
        lv = self.lvm.lv(self.vg)
        changed = lv is None
        if lv is None:
            # Stopped between vgcreate and lvcreate: a VG of the drive's volumes with no LV holds no data.
            self.lvm.lvcreate_full(self.vg)
            lv = self.lvm.lv(self.vg)
        if lv is None:
            raise LayoutError(f"drive {self.drive!r}: lvcreate reported success but {self.lv_path} is not there")
        if not lv.active:
            self.lvm.vgchange(self.vg, True)
            changed = True
        found = probe(self.runner, self.lv_path)
        if found.blank:
            self.fs.make(self.lv_path)
            return True
        if found.type != self.fs.fstype:
            raise ForeignDevice(f"{self.lv_path} holds {found.describe()}, not btrfs; bsud will not format it")
        return changed

    def mount_source(self, devices: list[str]) -> str:
        return self.lv_path

    def _fs_devices(self, devices: list[str]) -> list[str]:
        return [self.lv_path]

    def _register(self, devices: list[str]) -> bool:
        """With LVM's devices file in use, list the drive's (verified) devices in it so LVM sees them; whether one
        was added."""
        added = False
        if self.lvm.devices_file_enabled():
            for dev in devices:
                if not self.lvm.devices_file_has(dev):
                    self.lvm.devices_file_add(dev)
                    added = True
        return added

    def activate(self, devices: list[str]) -> bool:
        changed = self._register(devices)
        lv = self.lvm.lv(self.vg)
        if lv is not None and not lv.active:
            self.lvm.vgchange(self.vg, True)
            changed = True
        return changed

    def refresh(self, devices: list[str]) -> bool:
        """A volume unplugged under the active LV and plugged again is a new device to the kernel: reload the
        LV's table so that its extents map to it again (``lvchange --refresh``). Nothing to reload when the LV maps
        to no device that went away (the observation planned it on had seen one)."""
        changed = self._register(devices)
        stale = self.lvm.stale_devices(self.lv_path)
        if not stale:
            return changed
        log.warning("reloading the LV's table onto the drive's devices", drive=self.drive, gone=stale)
        self.lvm.refresh(self.vg)
        left = self.lvm.stale_devices(self.lv_path)
        if left:
            # Reloaded from the metadata onto the PVs present, the table cannot map to a gone device: the sysfs
            # holders links say otherwise, so they are not to be trusted on this kernel.
            self.stale_check = False
            log.error("the LV still looks mapped to devices that went away after lvchange --refresh; not checking "
                      "for stale mappings any more (until bsud restarts)", drive=self.drive, devices=left)
        return True

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

    def deactivate(self, devices: list[str]) -> bool:
        """Deactivate the VG's LVs; False when none was active (or the VG is not there)."""
        if self.lvm.vg(self.vg) is None or not any(lv.active for lv in self.lvm.lvs(self.vg)):
            return False
        self.lvm.vgchange(self.vg, False)
        return True

    def live_bytes(self, mount_point: str, devices: list[str]) -> dict[str, int] | None:
        """The btrfs data in each PV's stretches of the LV: the chunks btrfs uses, laid over the LV's segments.

        (A removal shrinks btrfs to about the data, then pvmove copies the PV's extents that remain in the LV: a PV
        at the LV's end costs about its data, one at its start its extents below the new size.)"""
        fs = self.fs.show(mount_point)
        segments = self.lvm.segments(self.vg)
        if fs is None or len(fs.devices) != 1 or not segments:
            return None
        chunks = self.fs.chunks(mount_point)
        if chunks is None:
            return None
        ranges: dict[str, list[tuple[int, int]]] = {}
        for seg in segments:
            ranges.setdefault(os.path.realpath(seg.device), []).append((seg.lv_start, seg.lv_start + seg.size))
        live = live_in_ranges(chunks, fs.devices[0].devid, ranges)
        return {os.path.realpath(dev): live.get(os.path.realpath(dev), 0) for dev in devices}

    def can_grow(self, mount_point: str) -> bool:
        group = self.lvm.vg(self.vg)
        if group is not None and group.free >= max(group.extent_size, 1):
            return True
        return bool(self.fs.growable(mount_point))

    def _resume_moves(self) -> bool:
        """Finish a pvmove that was interrupted (bsud stopped mid-move): a burst aborts it like any other. Whether
        there was one."""
        moves = self.lvm.moves_in_progress(self.vg)
        if not moves:
            return False
        sources = sorted({lv.move_pv for lv in moves if lv.move_pv})
        log.info("resuming an interrupted pvmove", drive=self.drive, devices=sources)

        def abort() -> None:
            for source in sources:
                self.lvm.pvmove_abort(source)
        with self.preemption.move(f"pvmove (resumed) {' '.join(sources)}", abort):
            self.lvm.pvmove()
        return True

    def grow(self, mount_point: str) -> bool:
        resumed = self._resume_moves()
        grew = self.lvm.lvextend_full(self.vg)
        if grew or self.fs.growable(mount_point):
            self.fs.grow(mount_point)
            return True
        return resumed

    def remove_device(self, device: str, mount_point: str, keep_bytes: int | None = None) -> bool:
        """btrfs shrink → lvreduce → pvmove → vgreduce → pvremove → lvextend → btrfs grow, each step skipped
        when already done, so a run interrupted anywhere is completed by running it again.

        A burst stops it (:class:`~bsud.host.preempt.Preempted`): the shrink is cancelled (the size goes back) or
        the pvmove aborted (``pvmove --abort``: what was mirrored stays moved, no pvmove LV is left, the LV is
        whole; shrunk, it grows back at the next Grow), or the next of them is not started."""
        with self.preemption.span():
            return self._remove_device(device, mount_point, keep_bytes)

    def _remove_device(self, device: str, mount_point: str, keep_bytes: int | None) -> bool:
        group = self.lvm.vg(self.vg)
        pv = next((p for p in self.lvm.pvs([device]) if p.vg_name == self.vg), None)
        if group is None:
            raise LayoutError(f"drive {self.drive!r}: VG {self.vg} not found")
        changed = self._resume_moves()
        if pv is not None:
            changed = True  # at the least, the PV leaves the VG
            others = [p for p in self.lvm.pvs() if p.vg_name == self.vg and p.name != device]
            if not others:
                raise LayoutError(f"drive {self.drive!r}: {device} is its only PV; cannot remove it")
            extent = max(group.extent_size, 1)
            room = sum(p.size for p in others)
            lv_target = (room // extent) * extent
            fs_target = lv_target - extent  # margin: LVM rounds sizes up to whole extents
            if keep_bytes is not None:
                fs_target = min(fs_target, max(keep_bytes, MIN_DEVICE_BYTES))
                lv_target = min(lv_target, ((fs_target + 2 * extent - 1) // extent) * extent)
            lv = self.lvm.lv(self.vg)
            if lv is None:
                raise LayoutError(f"drive {self.drive!r}: LV {self.vg}/{LV_NAME} not found")
            if lv.size > lv_target:
                fs_size = self.fs.shrink(mount_point, fs_target)
                if fs_size is None or fs_size > lv_target:
                    raise LayoutError(f"drive {self.drive!r}: btrfs did not shrink below {lv_target} bytes; "
                                      "not reducing the LV")
                self.lvm.lvreduce(self.vg, lv_target)
            pv = next((p for p in self.lvm.pvs([device]) if p.vg_name == self.vg), None)
            if pv is not None and pv.size - pv.free > 0:
                with self.preemption.move(f"pvmove {device}", lambda: self.lvm.pvmove_abort(device)):
                    self.lvm.pvmove(device)
            if pv is not None:
                self.lvm.vgreduce(self.vg, device)
        if self.lvm.pvs([device]):
            self.lvm.pvremove(device)
            changed = True
        return self.grow(mount_point) or changed


