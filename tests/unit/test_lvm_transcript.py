"""The lvm layout replayed from command transcripts, at the runner's seam (tests/unit/transcript.py: no subprocess,
nothing patched but the sysfs reading of stale mappings): assemble, grow, remove and refresh — and the activations —
each run twice, checking the exact commands bsud issues, in order, and that the first run reports CHANGED and the
idempotent re-run UNCHANGED.

The replies are lvm's own: its JSON reports in the layout lvm2 prints them (checked against outputs captured from lvm2
on loop devices: tests/unit/data/lvm/), its messages, its exit codes (5 for a VG or PV not found).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bsud.cloud.local import LocalCloud
from bsud.config import CloudSettings, DriveConfig, Layout, Provider, Target
from bsud.host.devices import Resolution
from bsud.host.layouts import LvmLayout
from bsud.host.lvm import _LV_FIELDS, _PV_FIELDS, _VG_FIELDS
from bsud.naming import DRIVE_TAG
from bsud.reconcile.execute import Executor
from bsud.reconcile.model import Action, Activate, Deactivate, Grow, MakeFilesystem, Outcome, Refresh

from .transcript import Reply, TranscriptRunner

DATA = Path(__file__).resolve().parent / "data" / "lvm"
MNT = "/nonexistent/bsud-lvm-transcript"  # not a directory here: `btrfs filesystem show` is asked about it as is
GIB, MIB = 1024**3, 1024**2
EXTENT = 4 * MIB
CHANGED, UNCHANGED = Outcome.CHANGED, Outcome.UNCHANGED


# -- lvm's output ---------------------------------------------------------------------------------------------------

def report(kind: str, rows: list[dict[str, str]]) -> str:
    """A report as ``lvm pvs/vgs/lvs --reportformat json`` prints it (indented by two, one row per line)."""
    lines = ["  {", '      "report": [', "          {", f'              "{kind}": [']
    lines += ["                  {" + ", ".join(f'"{k}":"{v}"' for k, v in row.items()) + "}"
              + ("," if i < len(rows) - 1 else "") for i, row in enumerate(rows)]
    lines += ["              ]", "          }", "      ]", "  }"]
    return "\n".join(lines) + "\n"


def pv(name: str, vg: str, size: int, free: int, uuid: str) -> dict[str, str]:
    return {"pv_name": name, "vg_name": vg, "pv_size": str(size), "pv_free": str(free), "pv_uuid": uuid,
            "dev_size": str(size + (EXTENT if vg else 0))}


def vg(size: int, free: int, pvs: int, lvs: int = 1) -> dict[str, str]:
    return {"vg_name": "d", "vg_uuid": "E7wPxl-DBHk-8IUv-500c-PDXF-lYVv-4EizdC", "vg_size": str(size),
            "vg_free": str(free), "vg_extent_size": str(EXTENT), "pv_count": str(pvs), "lv_count": str(lvs),
            "vg_missing_pv_count": "0"}


def lv(size: int, devices: str, active: bool = True) -> dict[str, str]:
    return {"lv_name": "bsud", "vg_name": "d", "lv_size": str(size), "lv_path": "/dev/d/bsud",
            "lv_attr": "-wi-ao----" if active else "-wi-------", "lv_active": "active" if active else "",
            "move_pv": "", "copy_percent": "", "devices": devices}


def test_the_reports_are_laid_out_as_lvm_prints_them():
    two = [pv("/dev/loop0", "zz", 1069547520, 1069547520, "BmdOwL-Fc17-qT9S-CFhQ-ehLg-k4nA-31XxNN"),
           pv("/dev/loop1", "zz", 2143289344, 2143289344, "a3Y6ek-HBXB-dxTG-dDL2-5EN2-KA5I-wE46kZ")]
    assert report("pv", two) == (DATA / "pvs_two_in_vg.json").read_text()
    assert report("vg", []) == (DATA / "vgs_not_found.json").read_text()
    one = {**vg(3212836864, 3212836864, 2, 0), "vg_name": "zz"}
    assert report("vg", [one]) == (DATA / "vgs_one.json").read_text()


def pvs(*devices: str) -> tuple[str, ...]:
    return ("lvm", "pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _PV_FIELDS, *devices)


VGS = ("lvm", "vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _VG_FIELDS, "d")
LVS = ("lvm", "lvs", "-a", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _LV_FIELDS, "d")
CONFIG = ("lvm", "config", "--typeconfig", "full", "devices/use_devicesfile")
SHOW = ("btrfs", "filesystem", "show", "--raw", MNT)
NO_VG = Reply(VGS, rc=5, stdout=report("vg", []), stderr='  Volume group "d" not found\n  Cannot process volume group d\n')


def show(size: int) -> str:
    return ("Label: 'bsud-d'  uuid: 55918e22-9d34-4916-b7fb-0597ca90ad81\n\tTotal devices 1 FS bytes used 1073741824\n"
            f"\tdevid    1 size {size} used {size // 2} path /dev/mapper/d-bsud\n\n")


def blank(device: str) -> list[Reply]:
    """``probe`` of a device holding nothing: blkid finds nothing (exit 2), wipefs neither."""
    return [Reply(("blkid", "-p", "-o", "export", device), rc=2),
            Reply(("wipefs", "--no-act", "--json", device), stdout='{\n   "signatures": [\n\n   ]\n}\n')]


def holding(device: str, fstype: str, uuid: str, label: str | None = None) -> list[Reply]:
    usage = "raid" if fstype == "LVM2_member" else "filesystem"
    version = "VERSION=LVM2\\ 001\n" if fstype == "LVM2_member" else "UUID_SUB=0b6d6e4e-bcfc-4b33-a4f8-1e5d4c4c1b0d\n"
    blkid = (f"DEVNAME={device}\n" + (f"LABEL={label}\n" if label else "") + f"UUID={uuid}\n{version}"
             f"TYPE={fstype}\nUSAGE={usage}\n")
    offset = "0x218" if fstype == "LVM2_member" else "0x10040"
    name = Path(device).name
    wipefs = ('{\n   "signatures": [\n      {\n         "device": "' + name + '",\n         "offset": "' + offset
              + '",\n         "type": "' + fstype + '",\n         "uuid": "' + uuid + '",\n         "label": '
              + (f'"{label}"' if label else "null") + "\n      }\n   ]\n}\n")
    return [Reply(("blkid", "-p", "-o", "export", device), stdout=blkid),
            Reply(("wipefs", "--no-act", "--json", device), stdout=wipefs)]


# -- the drive --------------------------------------------------------------------------------------------------------

class Drive:
    """Drive ``d`` on the lvm layout with two volumes' devices (files, so that the gate's probe finds them)."""

    def __init__(self, tmp_path: Path) -> None:
        self.vdb, self.vdc, lv_path = (str(tmp_path / name) for name in ("xvdb", "xvdc", "d-bsud"))
        for path in (self.vdb, self.vdc, lv_path):
            Path(path).touch()
        self.lv_path = lv_path
        self.cloud = LocalCloud(CloudSettings(provider="local", state_dir=str(tmp_path / "state"), instance_id="i-x"))

    def layout(self, replies: list[Reply]) -> tuple[LvmLayout, TranscriptRunner]:
        runner = TranscriptRunner(replies)
        layout = LvmLayout("d", runner)
        layout.lv_path = self.lv_path  # /dev/d/bsud, where this machine has none
        return layout, runner

    def resolution(self, device: str) -> Resolution:
        return Resolution("vol-b" if device == self.vdb else "vol-c", device, "test", GIB, None)

    def run(self, action: Action, replies: list[Reply]) -> tuple[Outcome, TranscriptRunner]:
        layout, runner = self.layout(replies)
        spec = DriveConfig(name="d", target=Target.ONLINE, mount_path=MNT, layout=Layout.LVM)
        outcome = Executor(spec, self.cloud, layout, Provider.LOCAL).run(action, [self.vdb, self.vdc])
        return outcome, runner


@pytest.fixture
def drive(tmp_path: Path) -> Drive:
    return Drive(tmp_path)


def replayed(runner: TranscriptRunner, replies: list[Reply]) -> bool:
    """Every command of the transcript, in its order, and no other."""
    assert runner.argvs() == [r.argv for r in replies]
    return True


TAGS = {DRIVE_TAG: "d"}
PV_B = "BmdOwL-Fc17-qT9S-CFhQ-ehLg-k4nA-31XxNN"
PV_C = "a3Y6ek-HBXB-dxTG-dDL2-5EN2-KA5I-wE46kZ"
B_SIZE, C_SIZE = GIB - EXTENT, 2 * GIB - EXTENT


def test_assemble_joins_a_blank_volume_then_makes_the_filesystem(drive: Drive):
    first = [
        *blank(drive.vdb),
        Reply(("lvm", "pvcreate", drive.vdb), stdout=f'  Physical volume "{drive.vdb}" successfully created.\n'),
        Reply(pvs(drive.vdb), stdout=report("pv", [pv(drive.vdb, "", GIB, GIB, PV_B)])),
        NO_VG,
        Reply(("lvm", "vgcreate", "d", drive.vdb), stdout='  Volume group "d" successfully created\n'),
        Reply(LVS, stdout=report("lv", [])),
        Reply(("lvm", "lvcreate", "-n", "bsud", "-l", "100%FREE", "--wipesignatures", "n", "d"),
              stdout='  Logical volume "bsud" created.\n'),
    ]
    layout, runner = drive.layout(first)
    assert layout.join(drive.resolution(drive.vdb), TAGS, None) is True and replayed(runner, first)

    again = [
        *holding(drive.vdb, "LVM2_member", PV_B),
        Reply(pvs(drive.vdb), stdout=report("pv", [pv(drive.vdb, "d", B_SIZE, 0, PV_B)])),  # is it ours?
        Reply(pvs(drive.vdb), stdout=report("pv", [pv(drive.vdb, "d", B_SIZE, 0, PV_B)])),
        Reply(LVS, stdout=report("lv", [lv(B_SIZE, f"{drive.vdb}(0)")])),
    ]
    layout, runner = drive.layout(again)
    assert layout.join(drive.resolution(drive.vdb), TAGS, None) is False and replayed(runner, again)

    group = Reply(VGS, stdout=report("vg", [vg(B_SIZE, 0, 1)]))
    made = [group, Reply(LVS, stdout=report("lv", [lv(B_SIZE, f"{drive.vdb}(0)")])), *blank(drive.lv_path),
            Reply(("mkfs.btrfs", "-K", "-L", "bsud-d", "-d", "single", "-m", "dup", drive.lv_path),
                  stdout="btrfs-progs v6.2\nLabel:              bsud-d\nNumber of devices:  1\n")]
    outcome, runner = drive.run(MakeFilesystem(), made)
    assert outcome is CHANGED and replayed(runner, made)
    there = [group, Reply(LVS, stdout=report("lv", [lv(B_SIZE, f"{drive.vdb}(0)")])),
             *holding(drive.lv_path, "btrfs", "55918e22-9d34-4916-b7fb-0597ca90ad81", "bsud-d")]
    outcome, runner = drive.run(MakeFilesystem(), there)
    assert outcome is UNCHANGED and replayed(runner, there)


def test_a_second_volume_joins_the_vg(drive: Drive):
    first = [
        *blank(drive.vdc),
        Reply(("lvm", "pvcreate", drive.vdc), stdout=f'  Physical volume "{drive.vdc}" successfully created.\n'),
        Reply(pvs(drive.vdc), stdout=report("pv", [pv(drive.vdc, "", 2 * GIB, 2 * GIB, PV_C)])),
        Reply(VGS, stdout=report("vg", [vg(B_SIZE, 0, 1)])),
        Reply(("lvm", "vgextend", "d", drive.vdc), stdout='  Volume group "d" successfully extended\n'),
        Reply(LVS, stdout=report("lv", [lv(B_SIZE, f"{drive.vdb}(0)")])),
    ]
    layout, runner = drive.layout(first)
    assert layout.join(drive.resolution(drive.vdc), TAGS, None) is True and replayed(runner, first)


def test_grow_extends_the_lv_and_btrfs_once(drive: Drive):
    both = f"{drive.vdb}(0),{drive.vdc}(0)"
    first = [
        Reply(LVS, stdout=report("lv", [lv(B_SIZE, f"{drive.vdb}(0)")])),  # no pvmove to resume
        Reply(VGS, stdout=report("vg", [vg(B_SIZE + C_SIZE, C_SIZE, 2)])),
        Reply(("lvm", "lvextend", "-l", "+100%FREE", "d/bsud"),
              stdout="  Size of logical volume d/bsud changed from 1020.00 MiB (255 extents) to <2.99 GiB "
                     "(766 extents).\n  Logical volume d/bsud successfully resized.\n"),
        Reply(("btrfs", "filesystem", "resize", "1:max", MNT),
              stdout="Resize device id 1 (/dev/mapper/d-bsud) from 1020.00MiB to max\n"),
    ]
    outcome, runner = drive.run(Grow(), first)
    assert outcome is CHANGED and replayed(runner, first)
    again = [
        Reply(LVS, stdout=report("lv", [lv(B_SIZE + C_SIZE, both)])),
        Reply(VGS, stdout=report("vg", [vg(B_SIZE + C_SIZE, 0, 2)])),
        Reply(SHOW, stdout=show(B_SIZE + C_SIZE)),  # its device as large as the filesystem: nothing to grow
    ]
    outcome, runner = drive.run(Grow(), again)
    assert outcome is UNCHANGED and replayed(runner, again)


def test_remove_moves_a_volume_out_once(drive: Drive):
    both = f"{drive.vdb}(0),{drive.vdc}(0)"
    lv_target = B_SIZE
    fs_target = lv_target - EXTENT
    in_vg = report("pv", [pv(drive.vdc, "d", C_SIZE, GIB, PV_C)])
    first = [
        Reply(VGS, stdout=report("vg", [vg(B_SIZE + C_SIZE, GIB, 2)])),
        Reply(pvs(drive.vdc), stdout=in_vg),
        Reply(LVS, stdout=report("lv", [lv(B_SIZE + C_SIZE - GIB, both)])),  # no pvmove to resume
        Reply(pvs(), stdout=report("pv", [pv(drive.vdb, "d", B_SIZE, 0, PV_B), pv(drive.vdc, "d", C_SIZE, GIB,
                                                                                  PV_C)])),
        Reply(LVS, stdout=report("lv", [lv(B_SIZE + C_SIZE - GIB, both)])),
        Reply(SHOW, stdout=show(B_SIZE + C_SIZE - GIB)),
        Reply(("btrfs", "filesystem", "resize", f"1:{fs_target}", MNT),
              stdout=f"Resize device id 1 (/dev/mapper/d-bsud) from 1.99GiB to {fs_target}\n"),
        Reply(SHOW, stdout=show(fs_target)),
        Reply(("lvm", "lvreduce", "--yes", "-L", f"{lv_target}b", "d/bsud"),
              stdout="  Size of logical volume d/bsud changed from 1.99 GiB (510 extents) to 1020.00 MiB (255 "
                     "extents).\n  Logical volume d/bsud successfully resized.\n",
              stderr="  WARNING: Reducing active and open logical volume to 1020.00 MiB.\n  THIS MAY DESTROY YOUR "
                     "DATA (filesystem etc.)\n"),
        Reply(pvs(drive.vdc), stdout=report("pv", [pv(drive.vdc, "d", C_SIZE, C_SIZE - 256 * MIB, PV_C)])),
        Reply(("lvm", "pvmove", "-i", "5", drive.vdc),
              stdout=f"  {drive.vdc}: Moved: 51.56%\n  {drive.vdc}: Moved: 100.00%\n"),
        Reply(("lvm", "vgreduce", "d", drive.vdc), stdout=f'  Removed "{drive.vdc}" from volume group "d"\n'),
        Reply(pvs(drive.vdc), stdout=report("pv", [pv(drive.vdc, "", 2 * GIB, 2 * GIB, PV_C)])),
        Reply(("lvm", "pvremove", drive.vdc),
              stdout=f'  Labels on physical volume "{drive.vdc}" successfully wiped.\n'),
        Reply(LVS, stdout=report("lv", [lv(lv_target, f"{drive.vdb}(0)")])),  # the grow after: nothing to give
        Reply(VGS, stdout=report("vg", [vg(B_SIZE, 0, 1)])),
        Reply(SHOW, stdout=show(fs_target)),
    ]
    layout, runner = drive.layout(first)
    assert layout.remove_device(drive.vdc, MNT) is True and replayed(runner, first)

    not_a_pv = Reply(pvs(drive.vdc), rc=5, stdout=report("pv", []),
                     stderr=f'  Failed to find physical volume "{drive.vdc}".\n')
    again = [
        Reply(VGS, stdout=report("vg", [vg(B_SIZE, 0, 1)])),
        not_a_pv,
        Reply(LVS, stdout=report("lv", [lv(lv_target, f"{drive.vdb}(0)")])),
        not_a_pv,
        Reply(LVS, stdout=report("lv", [lv(lv_target, f"{drive.vdb}(0)")])),
        Reply(VGS, stdout=report("vg", [vg(B_SIZE, 0, 1)])),
        Reply(SHOW, stdout=show(fs_target)),
    ]
    layout, runner = drive.layout(again)
    assert layout.remove_device(drive.vdc, MNT) is False and replayed(runner, again)


def test_refresh_registers_the_device_and_reloads_the_table_once(drive: Drive):
    """A volume detached and attached again behind bsud's back: the devices file learns its new device, and the LV's
    table is reloaded onto it. (Which devices the table still maps to that went away is read from sysfs: the test
    says it — vdc's old kernel name before the reload, nothing after.)"""
    listed_b = f"  Device {drive.vdb} IDTYPE=devname IDNAME={drive.vdb} DEVNAME={drive.vdb} PVID=BmdOwLFc17qT9SCFhQ\n"
    listed_c = f"  Device {drive.vdc} IDTYPE=devname IDNAME={drive.vdc} DEVNAME={drive.vdc} PVID=a3Y6ekHBXBdxTGdDL2\n"
    first = [
        Reply(CONFIG, stdout="use_devicesfile=1\n"),
        Reply(("lvm", "lvmdevices"), stdout=listed_b),
        Reply(("lvm", "lvmdevices"), stdout=listed_b),
        Reply(("lvm", "lvmdevices", "--adddev", drive.vdc)),
        Reply(("lvm", "lvchange", "--refresh", "d/bsud")),
    ]
    layout, runner = drive.layout(first)
    stale = [["xvdd"], []]
    layout.lvm.stale_devices = lambda lv_path: stale.pop(0)  # type: ignore[method-assign]
    assert layout.refresh([drive.vdb, drive.vdc]) is True and replayed(runner, first)
    assert stale == []

    again = [
        Reply(CONFIG, stdout="use_devicesfile=1\n"),
        Reply(("lvm", "lvmdevices"), stdout=listed_b + listed_c),
        Reply(("lvm", "lvmdevices"), stdout=listed_b + listed_c),
    ]
    layout, runner = drive.layout(again)
    layout.lvm.stale_devices = lambda lv_path: []  # type: ignore[method-assign]
    assert layout.refresh([drive.vdb, drive.vdc]) is False and replayed(runner, again)


def test_activate_and_deactivate_change_only_what_is_not_so(drive: Drive):
    both = f"{drive.vdb}(0),{drive.vdc}(0)"
    inactive = Reply(LVS, stdout=report("lv", [lv(B_SIZE + C_SIZE, both, active=False)]))
    active = Reply(LVS, stdout=report("lv", [lv(B_SIZE + C_SIZE, both)]))
    group = Reply(VGS, stdout=report("vg", [vg(B_SIZE + C_SIZE, 0, 2)]))
    no_devices_file = Reply(CONFIG, stdout="use_devicesfile=0\n")
    steps = [
        (Activate(), [no_devices_file, inactive, Reply(("lvm", "vgchange", "-a", "y", "d"),
                                                      stdout='  1 logical volume(s) in volume group "d" now active\n')],
         CHANGED),
        (Activate(), [no_devices_file, active], UNCHANGED),
        (Deactivate(), [group, active, Reply(("lvm", "vgchange", "-a", "n", "d"),
                                             stdout='  0 logical volume(s) in volume group "d" now active\n')],
         CHANGED),
        (Deactivate(), [group, inactive], UNCHANGED),
        (Deactivate(), [NO_VG], UNCHANGED),
    ]
    for action, replies, expected in steps:
        outcome, runner = drive.run(action, replies)
        assert outcome is expected, action
        assert replayed(runner, replies)


def test_refresh_through_the_executor(drive: Drive):
    replies = [Reply(CONFIG, stdout="use_devicesfile=0\n")]
    layout, runner = drive.layout(replies)
    layout.lvm.stale_devices = lambda lv_path: []  # type: ignore[method-assign]
    spec = DriveConfig(name="d", target=Target.ONLINE, mount_path=MNT, layout=Layout.LVM)
    assert Executor(spec, drive.cloud, layout, Provider.LOCAL).run(Refresh(), [drive.vdb]) is UNCHANGED
    assert replayed(runner, replies)
