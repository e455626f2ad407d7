"""btrfs's live space accounting from sysfs, on trees recorded from a real 1 GiB btrfs (kernel 6.18).

- ``idle``: just made, nothing written;
- ``writing``: 1.5 s into a 600 MiB write without fsync — ``btrfs filesystem usage`` still said 0 bytes used;
- ``nearfull``: after a write failed with ENOSPC (``usage.txt`` is ``btrfs filesystem usage -b`` of that moment).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bsud.host import mounts
from bsud.host.btrfs import parse_usage
from bsud.host.space import (Fingerprint, Pool, Space, SpaceReader, SysfsIncomplete, find_fs_dir, read_pool,
                             read_space, space_from_usage)
from bsud.reconcile.observe import usage_obs

DATA = Path(__file__).resolve().parents[1] / "data"
TREES = DATA / "sysfs_btrfs"
GIB, MIB = 1024**3, 1024**2


def test_idle_tree():
    space = read_space(TREES / "idle")
    assert space.size == GIB and space.source == "sysfs"
    assert space.data == Pool(allocated=8388608, raw_allocated=8388608, used=0)
    # metadata DUP: chunks take twice their logical size; the global reserve counts as taken (may_use)
    assert space.metadata.ratio(1.0) == 2.0
    assert space.metadata.used == 131072 + 5767168 + 65536
    assert space.unallocated == GIB - 8388608 - 107347968 - 16777216
    assert space.data_free == 8388608 + space.unallocated
    assert usage_obs(space).used_percent == 0.0


def test_writing_tree_counts_data_not_yet_committed():
    space = read_space(TREES / "writing")
    # 600 MiB written 1.5 s ago, none committed: the kernel already counts every byte (bytes_may_use).
    assert space.data.used == 600 * MIB
    assert space.data.allocated == 713031680
    usage = usage_obs(space)
    assert usage.used == 600 * MIB
    assert usage.used + usage.free == space.data.allocated + space.unallocated
    assert 60 < usage.used_percent < 70


def test_nearfull_tree_agrees_with_btrfs_filesystem_usage():
    live = read_space(TREES / "nearfull")
    committed = space_from_usage(parse_usage((TREES / "nearfull" / "usage.txt").read_text()))
    assert committed.source == "btrfs filesystem usage"
    # Nothing is in flight once the writer failed: both sources see the same pools.
    assert live.size == committed.size == GIB
    assert live.data.used == committed.data.used == 948568064
    assert live.data.allocated == committed.data.allocated
    assert live.unallocated == committed.unallocated == 1048576
    assert live.data_free == committed.data_free == 1048576
    assert usage_obs(live).used_percent > 99.8
    # metadata has room left in its chunks, but no unallocated space to grow into
    assert usage_obs(live).metadata_percent < 50


def test_fallback_model_from_two_device_usage():
    space = space_from_usage(parse_usage((DATA / "btrfs_usage_two_devices.txt").read_text()))
    assert space.size == 2 * GIB
    assert space.data == Pool(allocated=226492416, raw_allocated=226492416, used=52428800)
    assert space.metadata.raw_allocated == 2 * 53673984
    assert space.unallocated == 1796866048
    assert space.data_free == 226492416 - 52428800 + 1796866048


def test_size_hint_caps_capacity(tmp_path: Path):
    # A block device larger than the btrfs on it (LVM extended, btrfs not resized yet) is not capacity.
    space = read_space(TREES / "idle", size_hint=GIB // 2)
    assert space.size == GIB // 2
    assert read_space(TREES / "idle", size_hint=4 * GIB).size == GIB


@pytest.mark.parametrize("missing", ["allocation/data/bytes_may_use", "allocation/metadata/disk_total",
                                     "devices/loop0/size"])
def test_a_missing_field_is_reported_not_guessed(tmp_path: Path, missing: str):
    tree = tmp_path / "fs"
    shutil.copytree(TREES / "writing", tree)
    (tree / missing).unlink()
    with pytest.raises(SysfsIncomplete, match=Path(missing).name):
        read_space(tree)


def test_optional_counters_may_be_absent(tmp_path: Path):
    tree = tmp_path / "fs"
    shutil.copytree(TREES / "idle", tree)
    (tree / "allocation/metadata/bytes_readonly").unlink()
    (tree / "allocation/metadata/bytes_zone_unusable").unlink()
    assert read_pool(tree / "allocation/metadata").used == 131072 + 5767168


def test_metadata_pool_fills_without_data():
    # Many small files: metadata chunks full, no unallocated space left, data has room.
    space = Space(size=GIB, data=Pool(800 * MIB, 800 * MIB, 300 * MIB),
                  metadata=Pool(100 * MIB, 200 * MIB, 95 * MIB), system=Pool(8 * MIB, 16 * MIB, 16384))
    usage = usage_obs(space)
    assert usage.used_percent < 40
    assert usage.metadata_percent > 90


def test_fs_dir_found_by_the_mounted_device(tmp_path: Path):
    root = tmp_path / "sys"
    (root / "6bfc3207" / "devices" / "loop7").mkdir(parents=True)
    (root / "other" / "devices" / "loop1").mkdir(parents=True)
    entry = mounts.MountEntry(1, "0:1", "/", "/mnt/x", "rw", "btrfs", "/dev/loop7", "rw")
    assert find_fs_dir(entry, root) == root / "6bfc3207"
    gone = mounts.MountEntry(1, "0:1", "/", "/mnt/x", "rw", "btrfs", "/dev/loop9", "rw")
    assert find_fs_dir(gone, root) is None


# -- the fingerprint: whether anything was written since --------------------------------------------------------


@pytest.mark.parametrize(("counter", "moved"), [
    ("data/bytes_may_use", True),        # a buffered write, the moment it returns
    ("data/bytes_reserved", True),       # writeback under way
    ("data/bytes_used", True),           # written back
    ("data/bytes_pinned", True),         # a delete, at its commit
    ("metadata/bytes_may_use", True),    # a file created, renamed, a small file inlined
    ("metadata/bytes_used", True),
    ("data/bytes_readonly", True),       # a chunk being relocated (its free part counts as taken), a scrub
    ("metadata/bytes_zone_unusable", True),
    ("data/total_bytes", False),         # moves the free bytes only: read in full every few seconds
    ("metadata/disk_total", False),
    ("system/bytes_used", False),
], ids=lambda v: str(v))
def test_the_fingerprint_moves_with_every_counter_a_write_moves(tmp_path: Path, counter: str, moved: bool):
    tree = tmp_path / "fs"
    shutil.copytree(TREES / "writing", tree)
    fingerprint = Fingerprint(tree, "/mnt/x")
    before = fingerprint.read()
    assert fingerprint.read() == before and len(before) == 12
    path = tree / "allocation" / counter
    path.write_text(f"{int(path.read_text()) + 4096}\n")
    assert (fingerprint.read() != before) is moved
    fingerprint.close()


def test_a_fingerprint_needs_every_counter_a_write_moves(tmp_path: Path):
    tree = tmp_path / "fs"
    shutil.copytree(TREES / "idle", tree)
    (tree / "allocation/metadata/bytes_zone_unusable").unlink()   # optional: a kernel may lack it
    fingerprint = Fingerprint(tree, "/mnt/x")
    assert len(fingerprint.read()) == 11
    fingerprint.close()
    (tree / "allocation/metadata/bytes_pinned").unlink()
    with pytest.raises(FileNotFoundError):
        Fingerprint(tree, "/mnt/x")


def test_the_reader_s_fingerprint_is_opened_where_the_filesystem_is_and_kept(tmp_path: Path, monkeypatch):
    root = tmp_path / "sys"
    shutil.copytree(TREES / "writing", root / "6bfc3207")
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    entry = mounts.MountEntry(1, "0:1", "/", str(mount_point), "rw", "btrfs", "/dev/loop0", "rw")
    looked = []
    monkeypatch.setattr(mounts, "mount_at", lambda path: looked.append(path) or entry)
    reader = SpaceReader(btrfs=None, root=root)  # type: ignore[arg-type]
    first = reader.fingerprint(str(mount_point))
    assert first is not None and reader.fingerprint(str(mount_point)) == first
    assert len(looked) == 1                     # found once; no stat nor lookup on the next ones
    may_use = root / "6bfc3207/allocation/data/bytes_may_use"
    may_use.write_text("1\n")
    assert reader.fingerprint(str(mount_point)) != first
    reader.fallback = True                      # `btrfs filesystem usage` in use: sysfs cannot say
    assert reader.fingerprint(str(mount_point)) is None


def test_no_fingerprint_where_sysfs_has_no_directory_for_the_filesystem(tmp_path: Path, monkeypatch):
    entry = mounts.MountEntry(1, "0:1", "/", str(tmp_path), "rw", "btrfs", "/dev/loop9", "rw")
    monkeypatch.setattr(mounts, "mount_at", lambda path: entry)
    assert SpaceReader(btrfs=None, root=tmp_path / "sys").fingerprint(str(tmp_path)) is None  # type: ignore[arg-type]
    monkeypatch.setattr(mounts, "mount_at", lambda path: None)   # not mounted
    assert SpaceReader(btrfs=None, root=tmp_path / "sys").fingerprint(str(tmp_path)) is None  # type: ignore[arg-type]
