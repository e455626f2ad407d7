"""The ``btrfs`` layout: btrfs spans the volumes itself (``device add`` / ``device remove``); no device-mapper."""

from __future__ import annotations

import os

from bsud.config.catalogue import Layout
from bsud.host import mounts
from bsud.host.devices import Resolution
from bsud.host.layouts.base import LayoutError, LayoutState, StorageLayout
from bsud.host.safety import BLANK, Probe, probe


class BtrfsLayout(StorageLayout):
    kind = Layout.BTRFS

    def is_own(self, found: Probe) -> bool:
        return self.fs.is_own(found)

    def _probe_all(self, devices: list[str]) -> dict[str, Probe]:
        return {dev: probe(self.runner, dev) for dev in devices}

    def observe(self, devices: list[str]) -> LayoutState:
        probes = self._probe_all(devices)
        own = {d: p for d, p in probes.items() if self.is_own(p)}
        uuids = {p.blkid.get("UUID") for p in own.values()}
        if len(uuids) > 1:
            raise LayoutError(f"drive {self.drive!r}: its volumes hold {len(uuids)} different btrfs filesystems "
                              f"labelled {self.fs.label!r} ({', '.join(sorted(u or '?' for u in uuids))}); "
                              "resolve by hand")
        members = frozenset(own)
        uuid = next(iter(uuids)) if uuids else None
        missing = None
        if uuid:
            fs = self.fs.show(uuid)
            if fs is not None and fs.missing:
                missing = f"btrfs {uuid} misses some of its devices ({len(fs.devices)} present)"
            elif fs is not None:
                # A device of the filesystem no volume of the drive resolves to (its volume deleted or untagged
                # while the device is still here): the volumes left are not the whole drive (see LvmLayout).
                ours = {os.path.realpath(d) for d in members}
                others = sorted(d.path for d in fs.devices if os.path.realpath(d.path) not in ours)
                if others:
                    missing = (f"btrfs {uuid} has {len(fs.devices)} devices, {len(others)} of them of no volume of "
                               f"the drive attached here ({', '.join(others)})")
        return LayoutState(
            members=members, has_filesystem=bool(own), fs_device=min(members) if members else None,
            active=bool(own), missing=missing,
        )

    def join(self, resolution: Resolution, volume_tags: dict[str, str], mount_point: str | None) -> bool:
        dev = resolution.device
        verdict = self.gate(resolution, volume_tags)
        if verdict != BLANK:
            return False  # already one of ours
        if mount_point is None or mounts.mount_at(mount_point) is None:
            raise LayoutError(f"drive {self.drive!r}: mount the filesystem before adding {dev}", temporary=True)
        self.fs.add_device(dev, mount_point)
        return True

    def ensure_filesystem(self, resolution: Resolution | None = None,
                          volume_tags: dict[str, str] | None = None) -> bool:
        if resolution is None or volume_tags is None:
            raise LayoutError(f"drive {self.drive!r}: no volume to make the filesystem on")
        if self.gate(resolution, volume_tags) != BLANK:
            return False  # already the drive's (the gate refuses anything else)
        self.fs.make(resolution.device)
        return True

    def mount_source(self, devices: list[str]) -> str:
        state = self.observe(devices)
        if state.fs_device is None:
            raise LayoutError(f"drive {self.drive!r}: none of its devices holds its filesystem")
        return state.fs_device

    def activate(self, devices: list[str]) -> bool:
        """Tell the kernel of the devices (``btrfs device scan``). Never CHANGED: the kernel's list of scanned devices
        cannot be read back, and what the observation calls active is the drive mounted (``drive_active``), which a
        scan does not change — the planner never asks a btrfs drive for it (mounting scans first)."""
        self.fs.scan(devices)
        return False

    def deactivate(self, devices: list[str]) -> bool:
        """Have the kernel forget the devices; never CHANGED, for the same reason as :meth:`activate`."""
        self.fs.forget(devices)
        return False

    def live_bytes(self, mount_point: str, devices: list[str]) -> dict[str, int] | None:
        """The used bytes of the chunks on each device: exactly what ``btrfs device remove`` relocates."""
        return self.fs.live_by_device(mount_point)

    def can_grow(self, mount_point: str) -> bool:
        return bool(self.fs.growable(mount_point))

    def grow(self, mount_point: str) -> bool:
        return self.fs.grow_devices(mount_point)

    def remove_device(self, device: str, mount_point: str, keep_bytes: int | None = None) -> bool:
        fs = self.fs.show(mount_point)
        if fs is None or fs.devid_of(device) is None:
            return False  # already out (device remove wipes its superblock)
        if len(fs.devices) < 2:
            raise LayoutError(f"drive {self.drive!r}: {device} is its only device; cannot remove it")
        # Cancelled by a burst (kernel 5.14+): the device stays whole, the chunks already moved stay moved, and the
        # next removal relocates only what is left on it.
        size = next(d.size for d in fs.devices if d.path == device)
        self.fs.remove_device(device, mount_point, size)
        return True
