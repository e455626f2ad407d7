"""The ``lvm`` layout of a highly available drive: the drive's LV is the backing device of a DRBD resource.

bsud keeps the volumes, PVs, VG and the one LV of 100 % as for any lvm drive, and grows the LV with every volume
joined — on both nodes, each on its own volumes. It never makes a filesystem on the LV, never mounts it, never
reads what is in it (the data of the DRBD device is there, its meta-data at the end), and never brings DRBD up,
down, Primary or Secondary. On the Primary, the filesystem on the DRBD device, mounted by the gateway (drbd-reactor's
promoter) at the drive's mount path, is watched and grown like any drive's; ``drbdadm resize`` runs there once both
nodes' LVs have grown (:meth:`resize_replica`).
"""

from __future__ import annotations

import os
from dataclasses import replace

from bsud.host import mounts
from bsud.host.devices import Resolution
from bsud.host.drbd import DrbdError, DrbdResource, device_bytes
from bsud.host.layouts.base import LayoutError, LayoutState
from bsud.host.layouts.lvm import LvmLayout
from bsud.errors import CommandError
from bsud.logs import get_logger
from bsud.runner import Runner
from bsud.storage import Replication, usable_bytes

log = get_logger("bsud.host.layouts")


class ReplicatedLvmLayout(LvmLayout):
    tools = (*LvmLayout.tools, "drbdadm")

    def __init__(self, drive: str, runner: Runner, resource: str, device: str | None = None) -> None:
        super().__init__(drive, runner)
        self.drbd = DrbdResource(runner, resource)
        #: The configured DRBD device (None: ``drbdadm sh-dev`` tells).
        self.device = device

    def observe(self, devices: list[str]) -> LayoutState:
        state = super().observe(devices)
        lv = self.lvm.lv(self.vg) if state.fs_device else None
        # The LV holds the DRBD device's data and meta-data: it is "the drive's filesystem" as far as assembling
        # goes, whatever a probe of it would say.
        has_lv = lv is not None
        replication = self.drbd.observe(self.device, self.lv_path, lv.size if lv else 0) if has_lv else \
            Replication(self.drbd.name, device=self.device)
        return replace(state, has_filesystem=has_lv and state.active, replication=replication)

    def ensure_filesystem(self, resolution: Resolution | None = None,
                          volume_tags: dict[str, str] | None = None) -> bool:
        """The LV only (DRBD's backing device): no filesystem, ever."""
        if self.lvm.vg(self.vg) is None:
            raise LayoutError(f"drive {self.drive!r}: no VG {self.vg} to make the LV in")
        lv = self.lvm.lv(self.vg)
        if lv is None:
            self.lvm.lvcreate_full(self.vg)
            return True
        if not lv.active:
            self.lvm.vgchange(self.vg, True)
            return True
        return False

    def join(self, resolution: Resolution, volume_tags: dict[str, str], mount_point: str | None) -> bool:
        """A volume joins, and the LV takes its space at once: the Primary's ``drbdadm resize`` waits on it (this
        node may be the Secondary, whose bsud watches no filesystem)."""
        changed = super().join(resolution, volume_tags, None)
        return self.lvm.lvextend_full(self.vg) or changed

    def drbd_device(self) -> str | None:
        return self.device or self.drbd.device()

    def mount_source(self, devices: list[str]) -> str:
        device = self.drbd_device()
        if device is None:
            raise LayoutError(f"drive {self.drive!r}: DRBD resource {self.drbd.name!r} has no device here")
        return device

    def mount(self, devices: list[str], mount_point: str, options: tuple[str, ...] = ()) -> bool:
        raise LayoutError(f"drive {self.drive!r} is highly available: its filesystem is on DRBD resource "
                          f"{self.drbd.name!r}, mounted by the gateway on the Primary, never by bsud")

    def _fs_devices(self, devices: list[str]) -> list[str]:
        device = self.drbd_device()
        return [device] if device else []

    def is_our_mount(self, entry: mounts.MountEntry, devices: list[str]) -> bool:
        device = self.drbd_device()
        if device is None:
            return False
        if os.path.realpath(entry.source) == os.path.realpath(device):
            return True
        return self.fs.is_mounted_from(entry, [device])

    def unmount(self, mount_point: str) -> bool:
        raise LayoutError(f"drive {self.drive!r} is highly available: its filesystem is the gateway's to unmount")

    def drive_active(self, state: LayoutState, mounted: bool) -> bool:
        return state.active

    def can_grow(self, mount_point: str) -> bool:
        """The LV can take more of the VG, or the mounted filesystem more of the DRBD device."""
        group = self.lvm.vg(self.vg)
        if group is not None and group.free >= max(group.extent_size, 1):
            return True
        return mounts.mount_at(mount_point) is not None and bool(self.fs.growable(mount_point))

    def grow(self, mount_point: str) -> bool:
        """The LV to 100 % of the VG; the filesystem on the DRBD device, where it is mounted here, to the device's
        size (after a resize). The DRBD device itself grows by :meth:`resize_replica` only."""
        grew = self.lvm.lvextend_full(self.vg)
        entry = mounts.mount_at(mount_point)
        if entry is not None and self.is_our_mount(entry, []) and self.fs.growable(mount_point):
            self.fs.grow(mount_point)
            grew = True
        return grew

    def resize_replica(self, assume_peer_has_space: bool) -> bool:
        """``drbdadm resize`` on the Primary; True when the device grew. Raises a temporary error when it did not
        although this node's LV has room (the peer's LV is still the smaller: its bsud joins its new volume)."""
        device = self.drbd_device()
        lv = self.lvm.lv(self.vg)
        if device is None or lv is None:
            raise LayoutError(f"drive {self.drive!r}: DRBD resource {self.drbd.name!r} or its LV is not there")
        before = device_bytes(device)
        if usable_bytes(lv.size) <= before:
            return False
        refused = ""
        try:
            self.drbd.resize(assume_peer_has_space)
        except CommandError as exc:  # e.g. the peer's disk too small, or a resync under way: it passes
            refused = f" (drbdadm: {exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else exc})"
        after = device_bytes(device)
        log.info("DRBD device resized", drive=self.drive, resource=self.drbd.name, before=before, after=after,
                 assumed_peer=assume_peer_has_space)
        if after <= before:
            raise DrbdError(f"DRBD resource {self.drbd.name!r} did not grow ({before} bytes){refused}: the peer's "
                            "disk is still the smaller (its bsud adds its new volume to its LV); trying again",
                            temporary=True, delay=2.0)
        return True

    def remove_device(self, device: str, mount_point: str, keep_bytes: int | None = None) -> bool:
        raise LayoutError(f"drive {self.drive!r} is highly available: a volume never leaves it (no shrinking)")
