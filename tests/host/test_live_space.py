"""Live space on a real btrfs (loop device): data counts the moment it is written, before any commit; the
fingerprint the sampler skips a full read on moves with the first write, and not while nothing is written; the
fallback to ``btrfs filesystem usage`` when sysfs cannot be read; the filesystem's size, not its devices'."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bsud.host.devices import GIB
from bsud.host.space import SpaceReader
from bsud.reconcile.observe import usage_obs

from .test_btrfs_layout import drive_on_one_volume

pytestmark = pytest.mark.host

MIB = 1024**2


def test_unwritten_back_data_counts_at_once(local, runner, workdir: Path):
    layout, _, r1 = drive_on_one_volume(local, runner)
    mnt = str(workdir / "m")
    layout.mount([r1.device], mnt)
    try:
        before = layout.usage(mnt)
        assert before.source == "sysfs" and before.size == GIB
        with open(Path(mnt) / "f", "wb") as fh:  # no fsync, no sync: still in the page cache
            for _ in range(300):
                fh.write(os.urandom(MIB))
        live = layout.live_usage(mnt)
        committed = layout.fs.btrfs.usage(mnt)
        assert live.data.used - before.data.used >= 300 * MIB
        assert committed.data_used < live.data.used  # what `btrfs filesystem usage` saw before a commit
        assert usage_obs(live).used_percent > 30
    finally:
        layout.unmount(mnt)


def test_the_fingerprint_moves_with_the_first_write_and_rests_while_nothing_is_written(local, runner,
                                                                                     workdir: Path):
    """What the sampler's fast path relies on: 4 KiB written without sync moves the fingerprint before any
    writeback; a delete moves it; an idle filesystem leaves it as it is (the sampler then skips the full read)."""
    layout, _, r1 = drive_on_one_volume(local, runner)
    mnt = str(workdir / "m")
    layout.mount([r1.device], mnt)
    try:
        layout.usage(mnt)  # a full observation: the size hint
        os.sync()
        time.sleep(1)
        rest = layout.live_fingerprint(mnt)
        assert rest is not None
        for _ in range(4):
            time.sleep(0.25)
            assert layout.live_fingerprint(mnt) == rest
        with open(Path(mnt) / "f", "wb") as fh:  # no fsync, no sync: in the page cache only
            fh.write(os.urandom(4096))
        written = layout.live_fingerprint(mnt)
        assert written != rest
        os.sync()
        time.sleep(1)
        synced = layout.live_fingerprint(mnt)
        (Path(mnt) / "f").unlink()
        os.sync()
        assert layout.live_fingerprint(mnt) != synced
    finally:
        layout.unmount(mnt)
    assert layout.live_fingerprint(mnt) is None  # unmounted: its counters answer ENODEV, nothing is there now


def test_without_sysfs_falls_back_and_says_so_once(local, runner, workdir: Path, tmp_path: Path):
    layout, _, r1 = drive_on_one_volume(local, runner)
    mnt = str(workdir / "m")
    layout.mount([r1.device], mnt)
    try:
        reader = SpaceReader(layout.fs.btrfs, root=tmp_path / "no-sysfs")
        with capture_logs() as logs:
            first = reader.read(mnt)
            second = reader.read(mnt)
        assert first.source == second.source == "btrfs filesystem usage" and reader.fallback
        assert first.size == GIB
        assert sum("not readable from sysfs" in entry["event"] for entry in logs) == 1
    finally:
        layout.unmount(mnt)


def test_device_bigger_than_the_filesystem_is_not_capacity(local, runner, workdir: Path):
    layout, v1, r1 = drive_on_one_volume(local, runner)
    mnt = str(workdir / "m")
    layout.mount([r1.device], mnt)
    try:
        layout.usage(mnt)  # a full observation: remembers the filesystem's own size
        with open(v1.backing_file, "r+b") as fh:
            fh.truncate(2 * GIB)
        subprocess.run(["losetup", "--set-capacity", r1.device], check=True)
        assert layout.live_usage(mnt).size == GIB  # the device grew, the filesystem not yet
        layout.grow(mnt)
        assert layout.usage(mnt).size == 2 * GIB
    finally:
        layout.unmount(mnt)
