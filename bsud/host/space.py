"""A mounted btrfs's space as the kernel counts it right now: ``/sys/fs/btrfs/<fsid>/allocation``.

``btrfs filesystem usage`` and statvfs count data only once it is written back and committed
(up to ~30 s): a fast writer fills a drive before they move. The kernel's space info counts a
write the moment it is reserved (``bytes_may_use``), then as reserved, then used; the sum stays
put while data moves between those states. Reading these files costs no process, so a drive can
be sampled several times a second.

Two pools compete for the devices' unallocated space: data and metadata (btrfs returns ENOSPC
when metadata runs out even with data space free). Each pool's capacity is its allocated chunks
plus what the unallocated space would give it with its profile (single: ×1, DUP/RAID1: ×½).
Where sysfs lacks a field, :class:`SpaceReader` falls back to ``btrfs filesystem usage -b`` and
says so once in the log.

Between two reads, :class:`Fingerprint` tells in a few microseconds whether anything was written: the sampler reads
the space in full only then, and every few seconds (an idle drive costs a dozen ``pread`` a sample).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bsud.errors import BsudError
from bsud.host import mounts
from bsud.host.btrfs import Btrfs, Usage
from bsud.logs import get_logger

log = get_logger("bsud.host.space")

SYSFS_BTRFS = Path("/sys/fs/btrfs")
#: What the kernel counts as taken or promised in a space info (``btrfs_space_info_used``).
REQUIRED_COUNTERS = ("bytes_used", "bytes_reserved", "bytes_may_use", "bytes_pinned")
OPTIONAL_COUNTERS = ("bytes_readonly", "bytes_zone_unusable")
POOLS = ("data", "metadata", "system")


class SysfsIncomplete(BsudError):
    """This kernel's sysfs lacks a field bsud reads; the caller falls back to ``btrfs filesystem usage``."""


@dataclass(frozen=True)
class Pool:
    """One btrfs space info (data, metadata or system)."""

    allocated: int        # logical bytes in allocated chunks (total_bytes)
    raw_allocated: int    # device bytes those chunks take (disk_total): ×2 for DUP
    used: int             # used + reserved + may_use + pinned (+ readonly, zone unusable)

    def ratio(self, default: float) -> float:
        """Device bytes per logical byte of this pool's profile."""
        return self.raw_allocated / self.allocated if self.allocated else default


@dataclass(frozen=True)
class Space:
    """A mounted btrfs's space, in bytes."""

    size: int             # the filesystem's devices, as btrfs sizes them
    data: Pool
    metadata: Pool
    system: Pool
    source: str = "sysfs"

    @property
    def unallocated(self) -> int:
        return max(0, self.size - self.data.raw_allocated - self.metadata.raw_allocated - self.system.raw_allocated)

    @property
    def data_free(self) -> int:
        """What data can still take: free room in data chunks plus unallocated space at the data profile."""
        return max(0, self.data.allocated - self.data.used) + int(self.unallocated / self.data.ratio(1.0))

    @property
    def metadata_free(self) -> int:
        return max(0, self.metadata.allocated - self.metadata.used) + \
            int(self.unallocated / self.metadata.ratio(2.0))


def _read_int(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return int(os.read(fd, 64).strip() or b"0")
    finally:
        os.close(fd)


class CounterFiles:
    """The sysfs counters of one filesystem, kept open and read again with ``pread`` at offset 0 (sysfs makes the
    value anew at each read from the start): one system call per counter instead of three, several times a second
    per drive. A counter that went away (the filesystem unmounted) is opened again once, else reported missing."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def read(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            try:
                return int(os.pread(fd, 64, 0).strip() or b"0")
            except OSError:
                self._fds.pop(path, None)
                os.close(fd)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            value = int(os.pread(fd, 64, 0).strip() or b"0")
        except BaseException:
            os.close(fd)
            raise
        self._fds[path] = fd
        return value

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


class Fingerprint:
    """The raw text of the counters the data and metadata pools' used bytes are made of (:data:`REQUIRED_COUNTERS`,
    and :data:`OPTIONAL_COUNTERS` where the kernel has them), kept open and read in one go: a dozen ``pread``,
    ~11 µs — a sample that ends there costs ~60 µs with the caches cold, as they are four times a second — against
    ~350–500 µs for a full sample (:func:`read_space`, the page cache, the meters, the status).

    Equal to the last one, those used bytes are what they were, and nothing was written: a buffered write reserves
    its space as it returns — data ``bytes_may_use`` and metadata's reservation (measured on a loop-mounted btrfs,
    kernel 6.18: 4 KiB written by dd without sync → data ``bytes_may_use`` +4096, metadata ``bytes_may_use`` and
    ``bytes_reserved`` up, before any writeback); writeback moves it to ``bytes_reserved`` then ``bytes_used``; a
    delete frees into ``bytes_pinned`` at its commit; a relocation makes its chunk read-only (``bytes_readonly``).
    Not in it: the chunks allocated and the devices' sizes, which move the free bytes only (a new data chunk takes
    from the unallocated space what it adds to the pool) — the sampler reads them in full every few seconds."""

    def __init__(self, fs_dir: Path, mount_point: str) -> None:
        self.fs_dir = fs_dir
        self.mount_point = mount_point
        self._fds: list[int] = []
        try:
            for pool in ("data", "metadata"):
                for name in (*REQUIRED_COUNTERS, *OPTIONAL_COUNTERS):
                    path = fs_dir / "allocation" / pool / name
                    if name in OPTIONAL_COUNTERS and not path.exists():
                        continue
                    self._fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            self.close()
            raise

    def read(self) -> tuple[bytes, ...]:
        """The counters' text now; OSError once the filesystem is unmounted (its sysfs files answer ENODEV)."""
        pread = os.pread
        return tuple([pread(fd, 32, 0) for fd in self._fds])

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def read_pool(directory: Path, files: CounterFiles | None = None) -> Pool:
    """One space info directory (``allocation/data`` …); :class:`SysfsIncomplete` when a field is missing."""
    read = files.read if files is not None else _read_int
    try:
        used = sum(read(directory / name) for name in REQUIRED_COUNTERS)
        allocated = read(directory / "total_bytes")
        raw = read(directory / "disk_total")
    except FileNotFoundError as exc:
        raise SysfsIncomplete(f"{exc.filename} is missing") from None
    except ValueError as exc:
        raise SysfsIncomplete(f"{directory}: unreadable counter ({exc})") from None
    for name in OPTIONAL_COUNTERS:
        try:
            used += read(directory / name)
        except (FileNotFoundError, ValueError):
            pass
    return Pool(allocated=allocated, raw_allocated=raw, used=used)


def device_bytes(fs_dir: Path, files: CounterFiles | None = None) -> int:
    """Sum of the block devices' sizes under ``<fsid>/devices/`` (the kernel's, in 512-byte sectors)."""
    read = files.read if files is not None else _read_int
    total = 0
    try:
        names = os.listdir(fs_dir / "devices")
    except FileNotFoundError:
        raise SysfsIncomplete(f"{fs_dir}/devices is missing") from None
    for name in names:
        try:
            total += read(fs_dir / "devices" / name / "size") * 512
        except (FileNotFoundError, ValueError):
            raise SysfsIncomplete(f"{fs_dir}/devices/{name}/size is unreadable") from None
    return total


def read_space(fs_dir: Path, size_hint: int | None = None, files: CounterFiles | None = None,
               leaving: int = 0) -> Space:
    """The live space of the filesystem whose sysfs directory is ``fs_dir``.

    ``size_hint`` is the filesystem's size as btrfs last reported it (``btrfs filesystem show``):
    block devices can be larger than the filesystem on them until it is resized (LVM before
    ``resize max``), so the smaller of the two is used — never more capacity than is usable.
    ``leaving`` is capacity a removal under way is taking away (a device being removed, the part
    of a device beyond a shrink's target): neither sysfs nor the hint shows it yet, writers
    already cannot use it.
    """
    allocation = fs_dir / "allocation"
    pools = [read_pool(allocation / name, files) for name in POOLS]
    size = device_bytes(fs_dir, files)
    if size_hint is not None:
        size = min(size, size_hint)
    return Space(size=max(0, size - leaving), data=pools[0], metadata=pools[1], system=pools[2])


def space_from_usage(usage: Usage) -> Space:
    """The same model from ``btrfs filesystem usage -b`` (committed data only: the fallback)."""
    def pool(size: int, used: int, ratio: float) -> Pool:
        return Pool(allocated=size, raw_allocated=int(size * ratio), used=used)

    return Space(
        size=usage.device_size - usage.slack,
        data=pool(usage.data_size, usage.data_used, usage.data_ratio),
        metadata=pool(usage.metadata_size, usage.metadata_used, usage.metadata_ratio),
        system=pool(usage.system_size, usage.system_used, usage.metadata_ratio),
        source="btrfs filesystem usage",
    )


def find_fs_dir(entry: mounts.MountEntry, root: Path = SYSFS_BTRFS) -> Path | None:
    """The ``/sys/fs/btrfs/<fsid>`` directory of a mounted btrfs, found by its device's kernel name."""
    name = os.path.basename(os.path.realpath(entry.source))
    try:
        candidates = os.listdir(root)
    except FileNotFoundError:
        return None
    for fsid in candidates:
        if os.path.exists(root / fsid / "devices" / name):
            return root / fsid
    return None


class SpaceReader:
    """Reads a mounted btrfs's live space: sysfs when it can, ``btrfs filesystem usage`` when it cannot."""

    def __init__(self, btrfs: Btrfs, root: Path = SYSFS_BTRFS) -> None:
        self.btrfs = btrfs
        self.root = root
        self._dirs: dict[tuple[str, int | None], Path] = {}
        self._files = CounterFiles()
        self._fingerprint: Fingerprint | None = None
        self._fallback_said = False
        self.fallback = False

    def _read_sysfs(self, mount_point: str, size_hint: int | None, leaving: int) -> Space:
        fs_dir = self._fs_dir(mount_point)
        if fs_dir is None:
            raise SysfsIncomplete(f"no directory under {self.root} for the btrfs mounted on {mount_point}")
        space = read_space(fs_dir, size_hint, self._files, leaving)
        self.fallback = False
        return space

    def _fs_dir(self, mount_point: str) -> Path | None:
        # The mount point's st_dev changes when anything is mounted or unmounted there: while it stays the
        # same, the filesystem found last time is still the one (one stat instead of parsing mountinfo).
        try:
            dev = os.stat(mount_point).st_dev
        except OSError:
            dev = None
        cached = self._dirs.get((mount_point, dev))
        if cached is not None and dev is not None:
            return cached
        entry = mounts.mount_at(mount_point)
        if entry is None or entry.fstype != "btrfs":
            raise BsudError(f"{mount_point} is not a mounted btrfs", temporary=True)
        found = find_fs_dir(entry, self.root)
        self._dirs = {(mount_point, dev): found} if found is not None else {}
        self._files.close()  # another filesystem (or none) here now: its counters are other files
        self._forget_fingerprint()
        return found

    def _forget_fingerprint(self) -> None:
        if self._fingerprint is not None:
            self._fingerprint.close()
            self._fingerprint = None

    def fingerprint(self, mount_point: str) -> tuple[bytes, ...] | None:
        """The counters any write to the btrfs mounted on ``mount_point`` moves (:class:`Fingerprint`), as raw text;
        None when sysfs cannot say (no directory, the ``btrfs filesystem usage`` fallback in use): the caller reads
        the space in full then. Its files are opened where the last :meth:`read` found the filesystem, and kept:
        no ``stat`` of the mount point here — an unmount makes them fail, and each full read looks again."""
        if self.fallback:
            return None
        if self._fingerprint is None or self._fingerprint.mount_point != mount_point:
            self._forget_fingerprint()
            try:
                fs_dir = self._fs_dir(mount_point)
                if fs_dir is None:
                    return None
                self._fingerprint = Fingerprint(fs_dir, mount_point)
            except (BsudError, OSError):
                return None
        try:
            return self._fingerprint.read()
        except OSError:
            self._forget_fingerprint()  # unmounted: opened afresh where the filesystem is next time
            return None

    def read(self, mount_point: str, size_hint: int | None = None, leaving: int = 0) -> Space:
        try:
            return self._read_sysfs(mount_point, size_hint, leaving)
        except SysfsIncomplete:
            self._dirs = {}  # the filesystem found last time may be gone: look it up again, once
            self._files.close()
            self._forget_fingerprint()
        try:
            return self._read_sysfs(mount_point, size_hint, leaving)
        except SysfsIncomplete as exc:
            if not self._fallback_said:
                log.warning("btrfs live space accounting is not readable from sysfs; using 'btrfs filesystem "
                            "usage' (counts data only once committed, and costs a process)",
                            mount=mount_point, missing=str(exc))
                self._fallback_said = True
            self.fallback = True
            return space_from_usage(self.btrfs.usage(mount_point))
