"""The drive's filesystem, the piece every layout puts on top of its storage: btrfs, labelled after the drive.

A layout decides *where* the filesystem lives (on the LV, or across the volumes themselves) and runs the
safety gate; this piece makes it on a device the gate found blank, recognises it (by label, or by the devices
it spans), grows and shrinks it, and reads its space — the exact size from ``btrfs filesystem show`` in a full
observation, the live figures from sysfs alone between observations.
"""

from __future__ import annotations

import os

from bsud.errors import BsudError, CommandError
from bsud.host import mounts
from bsud.host.btrfs import DATA_CHUNK_BYTES, Btrfs, Filesystem, FsDevice
from bsud.host.chunks import Chunk, live_by_devid, parse_device_usage, read_chunks
from bsud.host.preempt import Preemption
from bsud.host.safety import Probe
from bsud.host.space import Space, SpaceReader
from bsud.logs import get_logger
from bsud.naming import label_for
from bsud.runner import Runner

log = get_logger("bsud.host.filesystem")

#: What a relocation adds to the used bytes while it runs (bsud.host.preempt): the chunk in flight — measured on loop
#: devices, 1 GiB and 64 KiB — and an eighth.
RELOCATION_ALLOWANCE = DATA_CHUNK_BYTES + DATA_CHUNK_BYTES // 8


class DriveFilesystem:
    fstype = "btrfs"
    #: The commands it runs (beside the layout's own).
    tools: tuple[str, ...] = ("btrfs", "mkfs.btrfs")

    def __init__(self, drive: str, runner: Runner, preemption: Preemption | None = None) -> None:
        self.btrfs = Btrfs(runner)
        #: The drive's removal as the sampler can stop it (a relocation here is one of its moves).
        self.preemption = preemption or Preemption(drive)
        self.space = SpaceReader(self.btrfs)
        self.label = label_for(drive)
        self._size_hint: int | None = None
        self._chunks_said = False

    # -- recognising it ---------------------------------------------------------------------------

    def is_own(self, found: Probe) -> bool:
        """Whether a probed device holds this drive's filesystem."""
        return found.type == self.fstype and found.blkid.get("LABEL") == self.label

    def show(self, target: str) -> Filesystem | None:
        """The filesystem at a mount point, device or UUID (``btrfs filesystem show``).

        A directory that is not a mounted btrfs is answered None without asking btrfs: given one, ``btrfs filesystem
        show`` opens every block device of the machine to look for it, and one whose I/O hangs (an NVMe-oF or
        iSCSI disk whose target is gone) would hang bsud with it."""
        if target.startswith("/") and not target.startswith("/dev/") and os.path.isdir(target):
            entry = mounts.mount_at(target)
            if entry is None or entry.fstype != self.fstype:
                return None
        return self.btrfs.show(target)

    def is_mounted_from(self, entry: mounts.MountEntry, devices: list[str]) -> bool:
        """Whether a mount is this drive's filesystem: its label, or one of ``devices`` under it."""
        if entry.fstype != self.fstype:
            return False
        fs = self.show(entry.mount_point)
        if fs is None:
            return False
        if fs.label == self.label:
            return True
        paths = {os.path.realpath(d.path) for d in fs.devices}
        return bool(paths & {os.path.realpath(d) for d in devices})

    # -- changing it ------------------------------------------------------------------------------

    def make(self, device: str) -> None:
        """mkfs on a device the layout's gate found blank."""
        self.btrfs.mkfs(device, self.label)

    def scan(self, devices: list[str]) -> None:
        """Tell the kernel of the filesystem's devices (a multi-device btrfs mounts only once all are known)."""
        self.btrfs.scan(devices)

    def forget(self, devices: list[str]) -> None:
        for dev in devices:
            self.btrfs.forget(dev)

    def add_device(self, device: str, mount_point: str) -> None:
        self.btrfs.device_add(device, mount_point)

    def remove_device(self, device: str, mount_point: str, size: int = 0) -> None:
        """Move the data off ``device`` and take it out (btrfs wipes its superblock when done). A burst stops it
        (:class:`~bsud.host.preempt.Preempted`): the device stays, with its full ``size`` usable again at once."""
        with self.preemption.move(f"btrfs device remove {device}",
                                  lambda: self.btrfs.device_remove_cancel(mount_point), leaving=size,
                                  allowance=RELOCATION_ALLOWANCE):
            self.btrfs.device_remove(device, mount_point)

    def grow(self, mount_point: str, devid: int = 1) -> None:
        """Give one of its devices (the only one, on an LV) all its size."""
        self.btrfs.resize(mount_point, devid, "max")

    def grow_devices(self, mount_point: str) -> bool:
        """Give each of its devices that grew underneath it all its size; True when one grew."""
        grew = False
        for dev in self.growable(mount_point):
            self.btrfs.resize(mount_point, dev.devid, "max")
            grew = True
        return grew

    def growable(self, mount_point: str) -> list[FsDevice]:
        """Its devices whose block device is larger than what the filesystem uses of it."""
        fs = self.show(mount_point)
        return [d for d in (fs.devices if fs else ()) if (device_bytes(d.path) or 0) > d.size]

    def single_device_size(self, mount_point: str) -> int | None:
        """The size the filesystem uses of its (first) device, None when it cannot be read."""
        fs = self.show(mount_point)
        return fs.devices[0].size if fs and fs.devices else None

    def shrink(self, mount_point: str, target: int) -> int | None:
        """Shrink a single-device filesystem to ``target`` bytes (if larger); its size after, as btrfs reports it."""
        size = self.single_device_size(mount_point)
        if size is not None and size > target:
            try:
                self._shrink(mount_point, size, target)
            except CommandError as exc:
                if "No space left" not in exc.stderr:
                    raise
                # The chunks beyond the target found no room below it, which half-empty chunks may be taking (a
                # drive emptied after it was filled): pack those, then try once more (a failure again is reported).
                log.warning("btrfs found no room below the new size for the chunks it has to move; packing the "
                            "chunks at most half used, then shrinking again", mount=mount_point, target=target)
                with self.preemption.move("btrfs balance (packing chunks)",
                                          lambda: self.btrfs.balance_cancel(mount_point),
                                          allowance=RELOCATION_ALLOWANCE):
                    self.btrfs.compact(mount_point)
                self._shrink(mount_point, size, target)
            size = self.single_device_size(mount_point)
        return size

    def _shrink(self, mount_point: str, size: int, target: int) -> None:
        """The shrinking resize, stoppable by a burst (the size goes back to ``size``); the capacity beyond
        ``target`` is out of the writers' reach from its first second."""
        with self.preemption.move("btrfs shrink", lambda: self.btrfs.resize_cancel(mount_point),
                                  leaving=size - target, allowance=RELOCATION_ALLOWANCE):
            self.btrfs.resize(mount_point, 1, target)

    # -- its space --------------------------------------------------------------------------------

    def chunks(self, mount_point: str) -> list[Chunk] | None:
        """Its chunks with the bytes used in each (the kernel's trees, read with an ioctl); None when refused."""
        try:
            return read_chunks(mount_point)
        except OSError as exc:
            if not self._chunks_said:
                log.warning("btrfs chunk map not readable (BTRFS_IOC_TREE_SEARCH); the data per device is taken "
                            "from 'btrfs device usage' (allocated, not used)", mount=mount_point, error=str(exc))
                self._chunks_said = True
            return None

    def live_by_device(self, mount_point: str) -> dict[str, int] | None:
        """Live bytes on each of its devices (real paths): what removing each would move. None when unknown."""
        fs = self.show(mount_point)
        if fs is None:
            return None
        chunks = self.chunks(mount_point)
        if chunks is not None:
            by_id = live_by_devid(chunks)
        else:
            try:
                by_id = parse_device_usage(self.btrfs.device_usage(mount_point))
            except BsudError:
                return None
        return {os.path.realpath(d.path): by_id.get(d.devid, 0) for d in fs.devices}

    def usage(self, mount_point: str) -> Space:
        """Live space, the exact size read with ``btrfs filesystem show`` (a full observation)."""
        fs = self.show(mount_point)
        self._size_hint = sum(d.size for d in fs.devices) if fs and fs.devices else None
        return self.space.read(mount_point, self._size_hint)

    def live_usage(self, mount_point: str) -> Space:
        """Live space from sysfs file reads alone, for sampling between full observations; while a removal's move
        runs, without the capacity it takes away (which writers can no longer use)."""
        return self.space.read(mount_point, self._size_hint, leaving=self.preemption.leaving)

    def live_fingerprint(self, mount_point: str) -> tuple[object, ...] | None:
        """What moves when anything is written, in a few microseconds: the allocation counters' raw text
        (:class:`~bsud.host.space.Fingerprint`), with the size the last full observation read (it caps the devices'
        sizes) and the capacity a removal's move is taking away. Equal to an earlier one, nothing was written and
        :meth:`live_usage` is what it was — but for the chunks allocated and the devices' own sizes (the free bytes
        only), which the caller reads in full every few seconds. None when sysfs cannot say."""
        counters = self.space.fingerprint(mount_point)
        return None if counters is None else (counters, self._size_hint, self.preemption.leaving)


def device_bytes(path: str) -> int | None:
    """A block device's size from sysfs, None when it is gone."""
    name = os.path.basename(os.path.realpath(path))
    try:
        with open(f"/sys/class/block/{name}/size") as fh:
            return int(fh.read().strip()) * 512
    except (OSError, ValueError):
        return None
