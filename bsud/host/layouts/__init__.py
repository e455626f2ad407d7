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
- a highly available drive (``ha``) is ``lvm`` whose LV is a DRBD resource's backing device
  (:class:`ReplicatedLvmLayout`): no filesystem on the LV, DRBD resized once both nodes' LVs grew.

A layout is one module here and one line in :data:`LAYOUTS`; it declares the tools it runs.
"""

from __future__ import annotations

from bsud.config.catalogue import Layout
from bsud.host.layouts.base import LayoutError, LayoutState, StorageLayout
from bsud.host.layouts.btrfs import BtrfsLayout
from bsud.host.layouts.lvm import LvmLayout
from bsud.host.layouts.replicated import ReplicatedLvmLayout
from bsud.runner import Runner

#: The config's ``layout`` value → the class that carries it out.
LAYOUTS: dict[Layout, type[StorageLayout]] = {
    Layout.LVM: LvmLayout,
    Layout.BTRFS: BtrfsLayout,
}

__all__ = ["LAYOUTS", "BtrfsLayout", "LayoutError", "LayoutState", "LvmLayout", "ReplicatedLvmLayout", "StorageLayout",
           "make_layout"]


def make_layout(kind: Layout, drive: str, runner: Runner,
                replica: tuple[str, str | None] | None = None) -> StorageLayout:
    """The drive's layout; ``replica`` (a highly available drive's DRBD resource and device) makes it the lvm
    layout under DRBD."""
    if replica is not None:
        if kind != Layout.LVM:
            raise ValueError(f"a highly available drive needs the lvm layout, not {kind.value}")
        return ReplicatedLvmLayout(drive, runner, *replica)
    return LAYOUTS[kind](drive, runner)
