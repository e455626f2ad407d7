"""A drive's mount-options: what is accepted or refused at load (one line each, naming the drive and the field),
and how each option shows in effect in /proc/self/mountinfo (the kernel's spelling: measured on 6.18; the host lane
checks it against the running kernel, tests/host/test_mount_options.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bsud.config import InvalidConfig, load_config
from bsud.config.mount_options import missing, problem, problems, shown, split

OK = ["compress", "compress=zstd", "compress=zstd:15", "compress=zlib:1", "compress=lzo", "compress-force=zstd:1",
      "compress=no", "noatime", "relatime", "lazytime", "nodiratime", "autodefrag", "commit=120", "discard",
      "discard=async", "nodiscard", "ssd", "nossd", "noacl", "acl", "nobarrier", "flushoncommit", "max_inline=0",
      "metadata_ratio=4", "thread_pool=8", "nodatacow", "nodatasum", "datacow", "noexec", "nosuid", "nodev",
      "user_subvol_rm_allowed", "skip_balance", "rw"]


@pytest.mark.parametrize("option", OK)
def test_accepted(option):
    assert problem(option) is None


@pytest.mark.parametrize(("option", "said"), [
    ("compress=zstd:16", "zstd's level is 1 to 15"),
    ("compress=zstd:-3", "zstd's level is 1 to 15"),   # kernel 6.15+ only; Debian 12's refuses it
    ("compress=lz4", "the algorithms are zlib, zstd, lzo"),
    ("compress=lzo:1", "lzo takes no level"),
    ("discard=always", "discard takes sync or async"),
    ("commit=0", "commit takes a number from 1 to 300"),
    ("commit=x", "commit takes a number"),
    ("ro", "bsud writes to its drives"),
    ("degraded", "bsud blocks such a drive"),
    ("subvol=/home", "mounts the whole filesystem"),
    ("device=/dev/sdb", "finds the drive's devices itself"),
    ("rescue=all", "mount the drive by hand"),
    ("space_cache=v1", "leave it out"),
    ("fatal_errors=panic", "brings the whole VM down"),
    ("noatmie", "is not a btrfs or mount option bsud knows"),
])
def test_refused(option, said):
    why = problem(option)
    assert why is not None and said in why and repr(option) in why


def test_contradictions_are_named():
    assert problems(["barrier", "nobarrier"]) == ["'barrier' and 'nobarrier' contradict each other; keep one"]
    assert problems(["nodiscard", "discard=async"]) == ["'nodiscard' and 'discard=async' contradict each other; "
                                                        "keep one"]
    assert problems(["compress=zstd:3", "noatime", "autodefrag"]) == []


def test_a_string_or_a_list():
    assert split("compress=zstd:3, noatime,,") == ("compress=zstd:3", "noatime")
    assert split(["compress=zstd:3", "noatime,autodefrag"]) == ("compress=zstd:3", "noatime", "autodefrag")


@pytest.mark.parametrize(("option", "mount", "super_", "in_effect"), [
    # the kernel's own lines (6.18): defaults filled in, discard=sync as discard, nodatacow with nodatasum
    ("compress", "rw,relatime", "rw,compress=zlib:3,discard=async,space_cache=v2,subvolid=5,subvol=/", True),
    ("compress=zstd", "rw,relatime", "rw,compress=zstd:3,space_cache=v2", True),
    ("compress=zstd:1", "rw,relatime", "rw,compress=zstd:3,space_cache=v2", False),
    ("compress=no", "rw,relatime", "rw,compress=zstd:3,space_cache=v2", False),
    ("compress=no", "rw,relatime", "rw,space_cache=v2", True),
    ("discard=sync", "rw,relatime", "rw,discard,space_cache=v2", True),
    ("discard", "rw,relatime", "rw,discard=async,space_cache=v2", False),
    ("nodiscard", "rw,relatime", "rw,discard=async,space_cache=v2", False),
    ("nodatacow", "rw,relatime", "rw,nodatasum,nodatacow,space_cache=v2", True),
    ("nodatacow", "rw,relatime", "rw,nodatasum,space_cache=v2", False),
    ("noatime", "rw,noatime", "rw,space_cache=v2", True),
    ("noatime", "rw,relatime", "rw,space_cache=v2", False),
    ("lazytime", "rw,relatime", "rw,lazytime,space_cache=v2", True),
    ("acl", "rw,relatime", "rw,space_cache=v2", True),
    ("acl", "rw,relatime", "rw,noacl,space_cache=v2", False),
    ("commit=30", "rw,relatime", "rw,space_cache=v2", True),
    ("commit=30", "rw,relatime", "rw,commit=60,space_cache=v2", False),
    ("commit=60", "rw,relatime", "rw,commit=60,space_cache=v2", True),
    ("thread_pool=4", "rw,relatime", "rw,space_cache=v2", True),   # never shown: not checked
])
def test_in_effect_as_the_kernel_shows_it(option, mount, super_, in_effect):
    assert (missing([option], mount, super_) == []) is in_effect
    assert shown(option).holds(set(mount.split(",")) | set(super_.split(","))) is in_effect


def write(tmp_path: Path, options) -> str:
    path = tmp_path / "bsud.json"
    path.write_text(json.dumps({"cloud": {"provider": "local", "state-dir": str(tmp_path / "state")},
                                "drives": [{"name": "data", "target": "online", "mount-path": "/srv/data",
                                            "layout": "btrfs", "mount-options": options}]}))
    return str(path)


def test_loaded_from_a_string_or_a_list(tmp_path: Path):
    assert load_config(write(tmp_path, "compress=zstd:3,noatime")).drive("data").mount_options == \
        ("compress=zstd:3", "noatime")
    assert load_config(write(tmp_path, ["compress=zstd:3", "noatime"])).drive("data").mount_options == \
        ("compress=zstd:3", "noatime")


def test_each_bad_option_is_one_line_naming_file_drive_and_field(tmp_path: Path):
    path = write(tmp_path, "compress=zstd:20,noatime,degraded")
    with pytest.raises(InvalidConfig) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert lines == [f"{path}: drive 'data': field 'mount-options': 'compress=zstd:20': zstd's level is 1 to 15",
                     f"{path}: drive 'data': field 'mount-options': 'degraded' is refused: it mounts a drive with "
                     "a volume missing; bsud blocks such a drive and says what is missing"]


@pytest.mark.parametrize(("drive", "line"), [
    ({"from-snapshot-set": "not a set!"}, "field 'from-snapshot-set': 'not a set!' is not a snapshot set id"),
])
def test_from_snapshot_set_is_checked_at_load(tmp_path: Path, drive, line):
    path = tmp_path / "bsud.json"
    path.write_text(json.dumps({"cloud": {"provider": "local", "state-dir": str(tmp_path / "state")},
                                "drives": [{"name": "data", "target": "online", "mount-path": "/srv/data",
                                            "layout": "btrfs", **drive}]}))
    with pytest.raises(InvalidConfig) as info:
        load_config(str(path))
    assert line in str(info.value)


@pytest.mark.parametrize("layout", ["btrfs", "lvm"])
def test_a_set_is_restored_to_either_layout(tmp_path: Path, layout):
    path = tmp_path / "bsud.json"
    path.write_text(json.dumps({"cloud": {"provider": "local", "state-dir": str(tmp_path / "state")},
                                "drives": [{"name": "copy", "target": "online", "mount-path": "/srv/copy",
                                            "layout": layout, "from-snapshot-set": "data-20261205T114958Z-4c90"}]}))
    assert load_config(str(path)).drive("copy").from_snapshot_set == "data-20261205T114958Z-4c90"
