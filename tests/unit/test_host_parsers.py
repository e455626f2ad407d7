"""Parsers of machine output, on outputs recorded on Debian 12 (btrfs-progs 6.2, lvm2 2.03.16, util-linux 2.38)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bsud.host.btrfs import parse_show, parse_usage
from bsud.host.lvm import parse_lvs, parse_pvs, parse_vgs
from bsud.host.mounts import mount_at, parse_mountinfo
from bsud.host.safety import Probe, parse_blkid_export, parse_wipefs_json

DATA = Path(__file__).resolve().parents[1] / "data"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_btrfs_usage_two_devices():
    usage = parse_usage(read("btrfs_usage_two_devices.txt"))
    assert usage.device_size == 2147483648
    assert usage.used == 52854784
    assert usage.free_estimated == 1970929664 and usage.free_min == 1072496640
    assert usage.slack == 0 and usage.unallocated == 1796866048
    assert usage.data_used == 52428800 and usage.metadata_size == 53673984 and usage.metadata_used == 196608
    assert usage.metadata_ratio == 2.0
    # used / (used + available), not statvfs blocks
    assert usage.used_percent == pytest.approx(100 * 52854784 / (52854784 + 1970929664))
    assert usage.metadata_free == 53673984 - 196608


def test_btrfs_usage_rejects_garbage():
    with pytest.raises(ValueError):
        parse_usage("nothing here")


def test_btrfs_show_two_devices():
    (fs,) = parse_show(read("btrfs_show_two_devices.txt"))
    assert fs.label == "bsud-data" and fs.uuid == "6b141b06-4e24-4ad1-a6cc-39b0fbef6422"
    assert [(d.devid, d.size, d.path) for d in fs.devices] == [
        (1, 1073741824, "/dev/loop0"), (2, 1073741824, "/dev/loop1")]
    assert fs.devid_of("/dev/loop1") == 2 and fs.devid_of("/dev/loop9") is None


def test_btrfs_show_without_label_and_several_filesystems():
    text = ("Label: none  uuid: aaaa\n\tTotal devices 1 FS bytes used 10\n\tdevid    1 size 100 used 5 path /dev/x\n\n"
            "Label: 'two'  uuid: bbbb\n\tTotal devices 1 FS bytes used 10\n\tdevid    3 size 200 used 5 path /dev/y\n")
    first, second = parse_show(text)
    assert first.label is None and first.devices[0].path == "/dev/x"
    assert second.label == "two" and second.devices[0].devid == 3


def test_pvs_vgs_lvs_reports():
    pvs = parse_pvs(read("pvs.json"))
    assert [(p.name, p.vg_name, p.size, p.free, p.dev_size) for p in pvs] == [
        ("/dev/loop3", "recvg", 1069547520, 1069547520, 1073741824),
        ("/dev/loop4", "recvg", 1069547520, 1069547520, 1073741824)]
    (vg,) = parse_vgs(read("vgs.json"))
    assert (vg.name, vg.size, vg.free, vg.extent_size, vg.pv_count, vg.lv_count) == (
        "recvg", 2139095040, 2139095040, 4194304, 2, 0)
    assert parse_lvs(read("lvs_empty.json")) == []


def test_lvs_with_a_move_in_progress():
    text = """{"report": [{"lv": [
      {"lv_name":"bsud", "vg_name":"data", "lv_size":"2139095040", "lv_path":"/dev/data/bsud", "lv_attr":"-wI-ao----",
       "lv_active":"active", "move_pv":"", "copy_percent":"", "devices":"pvmove0(0),/dev/sdc(0)"},
      {"lv_name":"[pvmove0]", "vg_name":"data", "lv_size":"1069547520", "lv_path":"", "lv_attr":"p-C-aom---",
       "lv_active":"active", "move_pv":"/dev/sdb", "copy_percent":"37.50", "devices":"/dev/sdb(0),/dev/sdd(0)"}
    ]}]}"""
    bsud, move = parse_lvs(text)
    assert bsud.active and not bsud.is_pvmove and bsud.devices == ("pvmove0", "/dev/sdc")
    assert move.is_pvmove and move.move_pv == "/dev/sdb" and move.copy_percent == 37.5


def test_blkid_and_wipefs():
    btrfs = parse_blkid_export(read("blkid_btrfs.txt"))
    assert btrfs["TYPE"] == "btrfs" and btrfs["LABEL"] == "bsud-data" and "DEVNAME" not in btrfs
    ext4 = parse_blkid_export(read("blkid_ext4.txt"))
    assert ext4["TYPE"] == "ext4"
    assert parse_blkid_export("VERSION=LVM2\\ 001\nTYPE=LVM2_member\n")["VERSION"] == "LVM2 001"
    sigs = parse_wipefs_json(read("wipefs_btrfs.json"))
    assert sigs[0]["type"] == "btrfs" and sigs[0]["offset"] == "0x10040"
    assert parse_wipefs_json('{"signatures": [\n\n]}') == ()
    assert Probe("/dev/x").blank
    assert Probe("/dev/x", ext4).describe().startswith("TYPE=ext4")
    assert not Probe("/dev/x", {}, sigs).blank


def test_mountinfo_unescapes_and_picks_top_of_stack():
    entries = parse_mountinfo(read("mountinfo.txt"))
    spaced = mount_at("/mnt/my data", entries)
    assert spaced is not None and spaced.source == "/dev/mapper/data-bsud" and spaced.fstype == "btrfs"
    assert mount_at("/mnt/stacked", entries).source == "/dev/loop2"
    assert mount_at("/mnt/none", entries) is None
    assert mount_at("/mnt/my data/", entries) is spaced


def test_dm_names_map_to_their_vg():
    from bsud.host.lvm import parse_suspended, vg_of_dm_name

    assert vg_of_dm_name("data-bsud") == "data"
    assert vg_of_dm_name("my--drive-bsud") == "my-drive"
    assert vg_of_dm_name("a-pvmove0") == "a"
    assert vg_of_dm_name("a--b-bsud") == "a-b"  # not VG "a"
    assert vg_of_dm_name("cryptroot") is None
    text = "data-bsud:Suspended\nother-bsud:Active\nmy--drive-pvmove0:Suspended\n"
    assert parse_suspended(text) == ["data-bsud", "my--drive-pvmove0"]


def test_vg_with_a_missing_pv():
    text = """{"report": [{"vg": [{"vg_name":"data", "vg_uuid":"u", "vg_size":"2139095040", "vg_free":"0",
      "vg_extent_size":"4194304", "pv_count":"2", "lv_count":"1", "vg_missing_pv_count":"1"}]}]}"""
    (vg,) = parse_vgs(text)
    assert (vg.pv_count, vg.missing_pv_count) == (2, 1)
    assert parse_vgs(read("vgs.json"))[0].missing_pv_count == 0  # an older report without the field


def _sysfs_with_dm(root: Path, slaves: dict[str, str]) -> None:
    """/sys/dev/block/253:0 → dm-0, its slaves linked to disks; ``slaves`` maps a name to how it stands:
    'held' (dm-0 in its holders), 'replugged' (a new disk under the same name: holders empty), 'gone'
    (the disk removed: the link dangles), 'unknown' (no holders directory at all)."""
    dm = root / "devices/virtual/block/dm-0"
    (dm / "slaves").mkdir(parents=True)
    (root / "dev/block").mkdir(parents=True)
    (root / "dev/block/253:0").symlink_to("../../devices/virtual/block/dm-0")
    for name, how in slaves.items():
        disk = root / f"devices/pci0/{name}"
        if how != "gone":
            disk.mkdir(parents=True)
        if how in ("held", "replugged"):
            (disk / "holders").mkdir()
        if how == "held":
            (disk / "holders/dm-0").symlink_to("../../../virtual/block/dm-0")
        (dm / "slaves" / name).symlink_to(f"../../../../pci0/{name}")


def test_stale_slaves_of_a_device_mapper_device(tmp_path: Path):
    from bsud.host.lvm import stale_slaves

    _sysfs_with_dm(tmp_path, {"vdb": "held", "vdc": "replugged", "vdd": "gone", "vde": "unknown"})
    assert stale_slaves("253:0", sysfs=str(tmp_path)) == ["vdc", "vdd"]
    assert stale_slaves("253:9", sysfs=str(tmp_path)) == []  # no such device: nothing to judge


def test_forced_read_only_is_told_from_a_read_only_mount():
    from bsud.host.mounts import forced_read_only

    lines = ("36 25 0:40 / /mnt/a rw,relatime shared:1 - btrfs /dev/mapper/a-bsud ro,space_cache=v2,subvol=/\n"
             "37 25 0:41 / /mnt/b ro,relatime shared:2 - btrfs /dev/mapper/b-bsud ro,space_cache=v2,subvol=/\n"
             "38 25 0:42 / /mnt/c rw,relatime shared:3 - btrfs /dev/mapper/c-bsud rw,space_cache=v2,subvol=/\n")
    a, b, c = parse_mountinfo(lines)
    assert forced_read_only(a)          # the kernel turned it read-only under a read-write mount
    assert not forced_read_only(b)      # mounted (or remounted) read-only on purpose
    assert not forced_read_only(c)
