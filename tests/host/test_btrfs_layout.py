"""The btrfs layout on real loop devices: make, mount, grow by adding devices, shrink by removing one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bsud.cloud.local import LocalCloud
from bsud.config import DriveConfig, Layout, Target
from bsud.errors import CommandError
from bsud.host.filesystem import DriveFilesystem
from bsud.naming import DRIVE_TAG
from bsud.host import mounts
from bsud.host.devices import GIB, DeviceMismatch, DeviceWaiter, VolumeRef
from bsud.host.layouts import BtrfsLayout, LayoutError
from bsud.reconcile.observe import observe_drive, usage_obs
from bsud.runner import Runner

from .conftest import attach, verify_files, write_files

pytestmark = pytest.mark.host

DRIVE = "hosttest"
TAGS = {DRIVE_TAG: DRIVE}


def drive_on_one_volume(local, runner):
    """A btrfs-layout drive made on one fresh 1 GiB volume (not mounted): layout, volume, resolution."""
    layout = BtrfsLayout(DRIVE, runner)
    volume = local.create_volume(DRIVE, 1, "gp2")
    resolution = attach(local, volume.id)
    layout.ensure_filesystem(resolution, TAGS)
    return layout, volume, resolution


def test_grow_by_adding_and_shrink_by_removing_a_device_with_data(local, runner, workdir: Path):
    layout = BtrfsLayout(DRIVE, runner)
    mnt = workdir / "mnt"
    v1 = local.create_volume(DRIVE, 1, "gp2")
    r1 = attach(local, v1.id)
    assert r1.rule == "loop backing file" and r1.size_bytes == GIB

    state = layout.observe([r1.device])
    assert not state.has_filesystem and not state.members
    layout.ensure_filesystem(r1, TAGS)
    layout.ensure_filesystem(r1, TAGS)  # idempotent: the second call sees its own filesystem
    state = layout.observe([r1.device])
    assert state.has_filesystem and state.members == {r1.device}

    layout.mount([r1.device], str(mnt))
    layout.mount([r1.device], str(mnt))  # idempotent
    assert mounts.mount_at(str(mnt)).fstype == "btrfs"
    sums = write_files(mnt, 3, 100, "a")
    before = usage_obs(layout.usage(str(mnt)))
    assert before.size == GIB and 25 < before.used_percent < 45

    v2 = local.create_volume(DRIVE, 1, "gp2")
    r2 = attach(local, v2.id)
    layout.join(r2, TAGS, str(mnt))
    layout.join(r2, TAGS, str(mnt))  # idempotent: already a member
    assert layout.observe([r1.device, r2.device]).members == {r1.device, r2.device}
    after = usage_obs(layout.usage(str(mnt)))
    assert after.size == 2 * GIB
    assert after.used_percent < before.used_percent
    sums |= write_files(mnt, 3, 100, "b")

    layout.remove_device(r1.device, str(mnt))
    layout.remove_device(r1.device, str(mnt))  # idempotent: already out
    fs = layout.fs.show(str(mnt))
    assert [d.path for d in fs.devices] == [r2.device]
    assert layout.usage(str(mnt)).size == GIB
    verify_files(sums)
    # The removed device carries no btrfs signature any more: it can be detached and deleted.
    assert layout.observe([r1.device, r2.device]).members == {r2.device}

    layout.unmount(str(mnt))
    assert mounts.mount_at(str(mnt)) is None
    layout.deactivate([r2.device])
    # Mount again from the remaining device: data intact.
    layout.mount([r2.device], str(mnt))
    verify_files(sums)
    layout.unmount(str(mnt))


def test_removing_the_only_device_is_refused(local, runner, workdir: Path):
    layout, v1, r1 = drive_on_one_volume(local, runner)
    layout.mount([r1.device], str(workdir / "m"))
    with pytest.raises(LayoutError):
        layout.remove_device(r1.device, str(workdir / "m"))
    layout.unmount(str(workdir / "m"))


def test_grow_after_the_volume_got_bigger(local, runner, workdir: Path):
    layout, v1, r1 = drive_on_one_volume(local, runner)
    mnt = str(workdir / "m")
    layout.mount([r1.device], mnt)
    assert layout.grow(mnt) is False
    # Enlarge the backing file and tell the loop driver (what a cloud volume resize looks like).
    with open(v1.backing_file, "r+b") as fh:
        fh.truncate(2 * GIB)
    subprocess.run(["losetup", "--set-capacity", r1.device], check=True)
    assert layout.grow(mnt) is True
    assert layout.usage(mnt).size == 2 * GIB
    layout.unmount(mnt)


def test_busy_unmount_names_the_holder(local, runner, workdir: Path):
    layout, v1, r1 = drive_on_one_volume(local, runner)
    mnt = workdir / "m"
    layout.mount([r1.device], str(mnt))
    holder = subprocess.Popen(["sleep", "60"], cwd=mnt)
    try:
        with pytest.raises(mounts.MountError) as info:
            layout.unmount(str(mnt))
        assert f"{holder.pid} (sleep)" in str(info.value) and info.value.temporary
    finally:
        holder.kill()
        holder.wait()
    layout.unmount(str(mnt))


def test_mount_refuses_a_non_empty_directory_or_another_filesystem(local, runner, workdir: Path):
    layout, v1, r1 = drive_on_one_volume(local, runner)
    busy = workdir / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("user data")
    with pytest.raises(mounts.MountError) as info:
        layout.mount([r1.device], str(busy))
    assert "not empty" in str(info.value)
    other = workdir / "other"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(other)], check=True)
    try:
        with pytest.raises(mounts.MountError) as info:
            layout.mount([r1.device], str(other))
        assert "tmpfs" in str(info.value)
    finally:
        subprocess.run(["umount", str(other)], check=True)
    assert (busy / "keep.txt").read_text() == "user data"


def test_resolver_on_loop_devices_refuses_a_wrong_size(local, workdir: Path):
    v1 = local.create_volume(DRIVE, 1, "gp2")
    r1 = attach(local, v1.id)
    with DeviceWaiter() as waiter, pytest.raises(DeviceMismatch) as info:
        waiter.wait(VolumeRef(v1.id, 2 * GIB, "/dev/xvdb", v1.backing_file), LocalCloud.device_rules, timeout=5)
    assert r1.device in str(info.value) and str(2 * GIB) in str(info.value)


class RecordingRunner(Runner):
    """A runner that records each command it actually starts."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[tuple[str, ...]] = []

    def _capture(self, full, argv, timeout, input_text):
        self.started.append(tuple(argv))
        return super()._capture(full, argv, timeout, input_text)


def test_an_observation_runs_each_read_once(local, workdir: Path):
    """A full observation of a mounted drive with a member and a blank volume: several pieces ask for the
    filesystem's ``show`` and each device's probe, but each command runs once; the next observation reads again."""
    runner = RecordingRunner()
    layout, v1, r1 = drive_on_one_volume(local, runner)
    mnt = workdir / "mnt"
    layout.mount([r1.device], str(mnt))
    v2 = local.create_volume(DRIVE, 1, "gp2")
    attach(local, v2.id)
    spec = DriveConfig(name=DRIVE, target=Target.ONLINE, mount_path=str(mnt), layout=Layout.BTRFS)
    volumes = [local.get_volume(v1.id), local.get_volume(v2.id)]

    runner.started.clear()
    obs, _ = observe_drive(spec, volumes, local, layout)
    assert obs.mounted and obs.usage is not None and obs.usage.size == GIB
    assert [v.blank for v in obs.volumes] == [False, True]
    first = list(runner.started)
    assert any(argv[:3] == ("btrfs", "filesystem", "show") for argv in first)
    assert len(first) == len(set(first)), f"a read ran twice: {first}"
    runner.started.clear()
    observe_drive(spec, volumes, local, layout)
    assert sorted(runner.started) == sorted(first)


def test_a_shrink_without_room_packs_the_chunks_tries_again_and_loses_nothing(workdir: Path):
    """A filesystem filled on 1 GiB, grown to 3 GiB, written beyond the first GiB, then half emptied by deleting
    every other file: the chunks below 1.2 GiB are half empty and btrfs finds no room there for the chunk it has to
    move (ENOSPC). bsud packs the half-empty chunks (a balance with usage filters) and tries once more; when that
    is not enough either, the error is reported, and every byte is still there."""
    image = workdir / "fs.img"
    image.write_bytes(b"")
    os.truncate(image, GIB)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                          check=True).stdout.strip()
    subprocess.run(["mkfs.btrfs", "-q", "-K", loop], check=True, capture_output=True)
    mnt = workdir / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", loop, str(mnt)], check=True)
    sums = write_files(mnt, 32, 25, "f")
    os.truncate(image, 3 * GIB)
    subprocess.run(["losetup", "-c", loop], check=True)
    subprocess.run(["btrfs", "filesystem", "resize", "max", str(mnt)], check=True, capture_output=True)
    sums |= write_files(mnt, 1, 300, "g")
    for i in range(0, 32, 2):
        (mnt / f"f{i}.bin").unlink()
        del sums[str(mnt / f"f{i}.bin")]
    subprocess.run(["sync"], check=True)
    runner = RecordingRunner()
    fs = DriveFilesystem("hosttest", runner)
    with pytest.raises(CommandError) as info:
        fs.shrink(str(mnt), 1200 * 1024**2)
    assert "No space left" in info.value.stderr
    resizes = [argv for argv in runner.started if argv[:3] == ("btrfs", "filesystem", "resize")]
    balances = [argv for argv in runner.started if argv[:3] == ("btrfs", "balance", "start")]
    assert len(resizes) == 2 and balances == [("btrfs", "balance", "start", "-dusage=50", "-musage=50", str(mnt))]
    assert fs.single_device_size(str(mnt)) == 3 * GIB
    verify_files(sums)


def test_a_directory_that_is_not_a_mounted_btrfs_is_not_looked_for_on_every_device(workdir: Path):
    """``btrfs filesystem show <dir>`` for a directory that is not a mounted btrfs opens every block device of the
    machine (one whose target is gone would hang it): bsud answers None without running it."""
    runner = RecordingRunner()
    fs = DriveFilesystem("hosttest", runner)
    (workdir / "empty").mkdir()
    assert fs.show(str(workdir / "empty")) is None
    assert fs.growable(str(workdir / "empty")) == []
    assert runner.started == []


def test_the_live_data_on_each_device_is_what_its_chunks_hold(local, runner, workdir: Path):
    """The chunk map read by ioctl (BTRFS_IOC_TREE_SEARCH): per device, the used bytes of its chunks — no more than
    what ``btrfs device usage`` says is allocated there, together what the filesystem holds; files deleted leave."""
    from bsud.host.chunks import parse_device_usage, read_chunks

    layout = BtrfsLayout(DRIVE, runner)
    mnt = workdir / "mnt"
    v1 = local.create_volume(DRIVE, 1, "gp2")
    r1 = attach(local, v1.id)
    layout.ensure_filesystem(r1, TAGS)
    layout.mount([r1.device], str(mnt))
    write_files(mnt, 3, 100, "a")                       # ~300 MiB on the first device
    v2 = local.create_volume(DRIVE, 4, "gp2")
    r2 = attach(local, v2.id)
    layout.join(r2, TAGS, str(mnt))
    write_files(mnt, 5, 100, "b")                       # new chunks go to the device with the most room
    subprocess.run(["btrfs", "filesystem", "sync", str(mnt)], check=True)

    live = layout.live_bytes(str(mnt), [r1.device, r2.device])
    assert live is not None and set(live) == {os.path.realpath(r1.device), os.path.realpath(r2.device)}
    fs = layout.fs.show(str(mnt))
    allocated = parse_device_usage(runner.run(["btrfs", "device", "usage", "-b", str(mnt)]).stdout)
    by_path = {os.path.realpath(d.path): d.devid for d in fs.devices}
    for path, value in live.items():
        assert 0 < value <= allocated[by_path[path]], (path, value, allocated)
    usage = usage_obs(layout.usage(str(mnt)))
    data = sum(c.stripe_bytes() for c in read_chunks(str(mnt)) if c.flags & 1)  # data chunks, single: one stripe
    assert abs(data - usage.used) < 16 * 1024**2, (data, usage.used)
    assert live[os.path.realpath(r2.device)] >= 400 * 1024**2

    for name in ("b0.bin", "b1.bin", "b2.bin", "b3.bin", "b4.bin"):
        (mnt / name).unlink()
    subprocess.run(["btrfs", "filesystem", "sync", str(mnt)], check=True)
    after = layout.live_bytes(str(mnt), [r1.device, r2.device])
    assert after[os.path.realpath(r2.device)] < 64 * 1024**2, after
    layout.unmount(str(mnt))


def test_a_member_whose_volume_left_the_listing_blocks_the_drive(local, workdir: Path):
    """A volume deleted (or untagged) in the cloud while its device is still here — a detach takes a while to reach
    the guest — is no longer among the drive's volumes, but the filesystem still spans it. Planned on the volume
    left, the drive looked like 1 GiB holding far less than its filesystem's size: a scale-down with a replacement
    volume was planned (the VM lane saw a volume created while a member was being deleted). The observation names
    the device of no volume, and the drive is blocked: nothing created, marked or removed."""
    from bsud.reconcile.model import Blocked
    from bsud.reconcile.planner import plan

    runner = Runner()
    layout, v1, r1 = drive_on_one_volume(local, runner)
    mnt = workdir / "mnt"
    layout.mount([r1.device], str(mnt))
    v2 = local.create_volume(DRIVE, 2, "gp2")
    r2 = attach(local, v2.id)
    layout.join(r2, TAGS, str(mnt))
    write_files(mnt, 2, 100, "a")
    spec = DriveConfig(name=DRIVE, target=Target.ONLINE, mount_path=str(mnt), layout=Layout.BTRFS,
                       min_used_space_perc=40, max_used_space_perc=85)
    both, _ = observe_drive(spec, [local.get_volume(v1.id), local.get_volume(v2.id)], local, layout)
    assert both.storage.missing is None and both.usage is not None and both.usage.used_percent < 40

    alone, _ = observe_drive(spec, [local.get_volume(v1.id)], local, layout)   # v2 gone from the listing
    assert alone.storage.missing is not None and r2.device in alone.storage.missing, alone.storage.missing
    step = plan(spec, alone)
    assert isinstance(step.action, Blocked), step
    assert "deleted or lost its tag" in step.action.reason
