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

A layout is one module here and one line in :data:`LAYOUTS`; it declares the tools it runs.
"""

from __future__ import annotations

from bsud.config.catalogue import Layout
from bsud.host.layouts.base import LayoutError, LayoutState, StorageLayout
from bsud.host.layouts.btrfs import BtrfsLayout
from bsud.host.layouts.lvm import LvmLayout
from bsud.runner import Runner

#: The config's ``layout`` value → the class that carries it out.
LAYOUTS: dict[Layout, type[StorageLayout]] = {
    Layout.LVM: LvmLayout,
    Layout.BTRFS: BtrfsLayout,
}

__all__ = ["LAYOUTS", "BtrfsLayout", "LayoutError", "LayoutState", "LvmLayout", "StorageLayout", "make_layout"]


def make_layout(kind: Layout, drive: str, runner: Runner) -> StorageLayout:
    return LAYOUTS[kind](drive, runner)
