"""Every action of the executor says truthfully what it did: run against real state (the local cloud's loop files, a
real btrfs), the first run reports CHANGED and the same action run again, with nothing left to do, UNCHANGED — the
engine's "nothing to do" guard relies on it. (The lvm layout's actions: tests/unit/test_lvm_transcript.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bsud.config import DriveConfig, Layout, Provider, Target
from bsud.host import mounts
from bsud.host.devices import GIB, VolumeRef, find_device
from bsud.host.layouts import BtrfsLayout
from bsud.naming import STATE_TAG
from bsud.reconcile.execute import Executor
from bsud.reconcile.model import (EVACUATED, REMOVING, Action, Activate, ApplyExports, ApplyMountOptions,
                                  AttachVolume, CreateVolume, Deactivate, DeleteVolume, DetachVolume, Grow, Join,
                                  MakeFilesystem, MarkVolume, Mount, Outcome, Remount, RemoveFromDrive, RetireVolume,
                                  Unmount, WithdrawExports)

from .conftest import verify_files, write_files

pytestmark = pytest.mark.host

DRIVE = "outcomes"
CHANGED, UNCHANGED = Outcome.CHANGED, Outcome.UNCHANGED


class Drive:
    """An executor on a btrfs-layout drive of the local cloud, with the devices of its volumes attached here."""

    def __init__(self, local, runner, workdir: Path, mount_options: tuple[str, ...] = ()) -> None:
        self.local = local
        self.mnt = str(workdir / "mnt")
        spec = DriveConfig(name=DRIVE, target=Target.ONLINE, mount_path=self.mnt, layout=Layout.BTRFS,
                           mount_options=mount_options)
        self.executor = Executor(spec, local, BtrfsLayout(DRIVE, runner), Provider.LOCAL, attach_timeout=10,
                                 device_timeout=20)

    def devices(self) -> list[str]:
        me = self.local.identity().instance_id
        found = [find_device(VolumeRef.from_volume(v, me), self.local.device_rules)
                 for v in self.local.list_volumes() if v.attachment_to(me)]
        return sorted(f.device for f in found if f is not None)

    def device_of(self, volume_id: str) -> str:
        found = find_device(VolumeRef.from_volume(self.local.get_volume(volume_id), "i-host"),
                            self.local.device_rules)
        assert found is not None
        return found.device

    def run(self, action: Action) -> Outcome:
        return self.executor.run(action, self.devices())

    def twice(self, action: Action) -> tuple[Outcome, Outcome]:
        return self.run(action), self.run(action)


def force_read_only(mnt: str, workdir: Path) -> None:
    """What the kernel does after a write error: the filesystem read-only under a mount still flagged rw. A second
    mount of the same filesystem, remounted ro, turns the superblock ro; it is then unmounted."""
    other = workdir / "other"
    other.mkdir()
    subprocess.run(["mount", "--bind", mnt, str(other)], check=True)
    subprocess.run(["mount", "-o", "remount,ro", str(other)], check=True)
    subprocess.run(["umount", str(other)], check=True)
    assert mounts.forced_read_only(mounts.mount_at(mnt))


def test_each_action_changes_once_then_has_nothing_to_do(local, runner, workdir: Path):
    drive = Drive(local, runner, workdir)
    # Creating always makes a volume: CHANGED each time (the planner asks for one only when the drive needs it).
    assert drive.run(CreateVolume(size_gib=1)) is CHANGED
    v1 = drive.executor.created
    assert drive.twice(AttachVolume(volume_id=v1)) == (CHANGED, UNCHANGED)
    assert local.get_volume(v1).tags.get(STATE_TAG) == ""  # the "new" mark dropped by the first
    assert drive.twice(MakeFilesystem(volume_id=v1)) == (CHANGED, UNCHANGED)
    assert drive.twice(Mount()) == (CHANGED, UNCHANGED)
    sums = write_files(Path(drive.mnt), 2, 50)

    assert drive.run(Remount()) is UNCHANGED  # mounted and writable: nothing to do
    force_read_only(drive.mnt, workdir)
    assert drive.twice(Remount()) == (CHANGED, UNCHANGED)
    assert not mounts.forced_read_only(mounts.mount_at(drive.mnt))

    assert drive.run(CreateVolume(size_gib=1)) is CHANGED
    v2 = drive.executor.created
    assert drive.twice(AttachVolume(volume_id=v2)) == (CHANGED, UNCHANGED)
    assert drive.twice(Join(volume_id=v2)) == (CHANGED, UNCHANGED)
    assert drive.executor.layout.usage(drive.mnt).size == 2 * GIB

    device = drive.device_of(v1)
    with local._locked() as meta:  # the cloud enlarged the volume: its size, its image, the loop device's capacity
        meta["volumes"][v1]["size_gib"] = 2
    with open(local.get_volume(v1).backing_file, "r+b") as fh:
        fh.truncate(2 * GIB)
    subprocess.run(["losetup", "--set-capacity", device], check=True)
    assert drive.twice(Grow()) == (CHANGED, UNCHANGED)
    assert drive.executor.layout.usage(drive.mnt).size == 3 * GIB

    assert drive.twice(MarkVolume(volume_id=v1, value=REMOVING)) == (CHANGED, UNCHANGED)
    assert drive.twice(RemoveFromDrive(volume_id=v1)) == (CHANGED, UNCHANGED)
    verify_files(sums)
    assert drive.twice(MarkVolume(volume_id=v1, value=EVACUATED)) == (CHANGED, UNCHANGED)
    assert drive.twice(RetireVolume(volume_id=v1)) == (CHANGED, UNCHANGED)
    assert local.get_volume(v1) is None

    # No export kind configured: nothing to apply or withdraw.
    assert drive.twice(ApplyExports()) == (UNCHANGED, UNCHANGED)
    assert drive.twice(WithdrawExports()) == (UNCHANGED, UNCHANGED)

    assert drive.twice(Unmount()) == (CHANGED, UNCHANGED)
    # A btrfs drive is active when mounted: a scan or a forget does not change that (never planned for it).
    assert drive.twice(Deactivate()) == (UNCHANGED, UNCHANGED)
    assert drive.twice(Activate()) == (UNCHANGED, UNCHANGED)
    assert drive.twice(DetachVolume(volume_id=v2)) == (CHANGED, UNCHANGED)
    assert drive.twice(DeleteVolume(volume_id=v2)) == (CHANGED, UNCHANGED)
    assert local.list_volumes() == []


def test_mount_options_are_set_at_the_mount_and_applied_once_by_a_remount(local, runner, workdir: Path):
    drive = Drive(local, runner, workdir, mount_options=("noatime", "compress=zstd:3"))
    drive.run(CreateVolume(size_gib=1))
    v1 = drive.executor.created
    drive.run(AttachVolume(volume_id=v1))
    drive.run(MakeFilesystem(volume_id=v1))
    assert drive.run(Mount()) is CHANGED
    assert drive.run(ApplyMountOptions()) is UNCHANGED  # mounted with them: nothing to do
    subprocess.run(["mount", "-o", "remount,relatime,compress=zlib", drive.mnt], check=True)
    assert drive.twice(ApplyMountOptions()) == (CHANGED, UNCHANGED)
    entry = mounts.mount_at(drive.mnt)
    assert "noatime" in entry.options and "compress=zstd:3" in entry.super_options
