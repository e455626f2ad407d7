"""A drive's mount-options on the running kernel: how each accepted option shows in /proc/self/mountinfo once in
effect (the model bsud.config.mount_options keeps of the kernel's spelling), set at the mount and by a remount; and
the daemon mounting a drive with them, then applying a changed list by remount (no unmount) after a reload."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from bsud.config.mount_options import missing, problem
from bsud.host import mounts
from bsud.runner import Runner

from .daemon_harness import DaemonHarness

pytestmark = pytest.mark.host

#: Every option bsud accepts that the kernel can show (thread_pool never shows; ssd/nossd depend on the device).
OPTIONS = ["compress", "compress=zstd", "compress=zstd:15", "compress=zlib:9", "compress=lzo", "compress-force=zstd:1",
           "noatime", "nodiratime", "lazytime", "autodefrag", "commit=60", "discard", "discard=sync", "discard=async",
           "nodiscard", "ssd", "nossd", "ssd_spread", "noacl", "nobarrier", "notreelog", "flushoncommit",
           "max_inline=0", "metadata_ratio=4", "nodatacow", "nodatasum", "noexec", "nosuid", "nodev",
           "user_subvol_rm_allowed", "skip_balance", "acl", "barrier", "datacow", "commit=30"]


def in_effect(point: str, option: str) -> bool:
    entry = mounts.mount_at(point)
    assert entry is not None
    return missing([option], entry.options, entry.super_options) == []


@pytest.mark.parametrize("option", OPTIONS)
def test_the_kernel_shows_each_option_as_bsud_expects_at_the_mount_and_after_a_remount(btrfs_loop, option):
    assert problem(option) is None
    loop, point = btrfs_loop
    runner = Runner()
    mounts.mount(runner, loop, point, option)
    try:
        entry = mounts.mount_at(point)
        assert in_effect(point, option), f"{option}: the kernel shows {entry.options} | {entry.super_options}"
    finally:
        mounts.unmount(runner, point)
    mounts.mount(runner, loop, point)
    try:
        mounts.remount(runner, point, (option,))
        entry = mounts.mount_at(point)
        assert in_effect(point, option), f"{option} by remount: the kernel shows {entry.options} | " \
                                         f"{entry.super_options}"
    finally:
        mounts.unmount(runner, point)


def test_a_missing_option_is_seen_missing(btrfs_loop):
    loop, point = btrfs_loop
    runner = Runner()
    mounts.mount(runner, loop, point, "compress=zstd:3")
    try:
        assert not in_effect(point, "compress=zstd:1") and not in_effect(point, "noatime")
        assert not in_effect(point, "compress=no")
    finally:
        mounts.unmount(runner, point)


def test_the_daemon_mounts_with_the_options_and_remounts_for_a_changed_list(workdir: Path):
    h = DaemonHarness(workdir, drive="opts", **{"mount-options": "compress=zstd:3,noatime"})
    try:
        h.start()
        st = h.wait_online(volumes=1)
        entry = mounts.mount_at(str(h.mount))
        assert entry is not None and "noatime" in entry.options and "compress=zstd:3" in entry.super_options
        assert st["mount_options"] == ["compress=zstd:3", "noatime"] and st["mount_options_missing"] == []
        first_id = entry.mount_id
        held = open(h.mount / "kept.txt", "w")  # noqa: SIM115 - open across the remount: an unmount would fail
        held.write("before the remount\n")
        held.flush()

        h.write_config(**{"mount-options": ["compress=zstd:1", "noatime", "autodefrag"]})
        h.signal(signal.SIGHUP)
        h.wait_for("the new options in effect", lambda s: s.get("mount_options") == ["compress=zstd:1", "noatime",
                                                                                     "autodefrag"]
                   and s.get("mount_options_missing") == [] and s.get("action") == "Idle", timeout=60)
        entry = mounts.mount_at(str(h.mount))
        assert entry is not None and entry.mount_id == first_id, "remounted in place, not unmounted"
        assert "compress=zstd:1" in entry.super_options and "autodefrag" in entry.super_options
        held.write("after\n")
        held.close()
        assert (h.mount / "kept.txt").read_text() == "before the remount\nafter\n"
        log = h.log_path.read_text()
        assert '"action": "ApplyMountOptions"' in log and "remount,compress=zstd:1,noatime,autodefrag" in log
        assert h.stop() == 0
    finally:
        h.close()
