"""LVM for the ``lvm`` layout: one PV per volume, a VG named after the drive, one LV ``bsud``.

Reports come from ``--reportformat json --units b --nosuffix`` (all values are strings).
Commands run with stdin closed, so a prompt is answered "no"; pvcreate never gets
``-y``/``-ff``. Exit codes are not trusted alone: callers observe again after acting.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from bsud.logs import get_logger
from bsud.naming import LV_NAME
from bsud.runner import Runner

log = get_logger("bsud.host.lvm")

PVMOVE_TIMEOUT = 48 * 3600.0
#: Aborting a pvmove is a metadata change (and the LV's table reloaded): no copying.
PVMOVE_ABORT_TIMEOUT = 300.0


@dataclass(frozen=True)
class PhysicalVolume:
    name: str
    vg_name: str
    size: int
    free: int
    uuid: str
    dev_size: int


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    uuid: str
    size: int
    free: int
    extent_size: int
    pv_count: int
    lv_count: int
    missing_pv_count: int = 0


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    vg_name: str
    size: int
    path: str
    attr: str
    active: bool
    move_pv: str
    copy_percent: float | None
    devices: tuple[str, ...]

    @property
    def is_pvmove(self) -> bool:
        return self.name.strip("[]").startswith("pvmove") or bool(self.move_pv)


def _int(value: str | None) -> int:
    return int(value) if value not in (None, "") else 0


def parse_report(text: str, kind: str) -> list[dict[str, str]]:
    """``{"report": [{"pv": [...]}]}`` → the rows of ``kind`` (pv, vg or lv)."""
    if not text.strip():
        return []
    rows: list[dict[str, str]] = []
    for block in json.loads(text).get("report", []):
        rows.extend(block.get(kind, []))
    return rows


def parse_pvs(text: str) -> list[PhysicalVolume]:
    return [
        PhysicalVolume(r["pv_name"], r.get("vg_name", ""), _int(r.get("pv_size")), _int(r.get("pv_free")),
                       r.get("pv_uuid", ""), _int(r.get("dev_size")))
        for r in parse_report(text, "pv")
    ]


def parse_vgs(text: str) -> list[VolumeGroup]:
    return [
        VolumeGroup(r["vg_name"], r.get("vg_uuid", ""), _int(r.get("vg_size")), _int(r.get("vg_free")),
                    _int(r.get("vg_extent_size")), _int(r.get("pv_count")), _int(r.get("lv_count")),
                    _int(r.get("vg_missing_pv_count")))
        for r in parse_report(text, "vg")
    ]


def parse_lvs(text: str) -> list[LogicalVolume]:
    out = []
    for r in parse_report(text, "lv"):
        copy = r.get("copy_percent", "")
        devices = tuple(re.sub(r"\(\d+\)$", "", d) for d in r.get("devices", "").split(",") if d)
        out.append(LogicalVolume(
            name=r["lv_name"], vg_name=r.get("vg_name", ""), size=_int(r.get("lv_size")),
            path=r.get("lv_path", ""), attr=r.get("lv_attr", ""), active=r.get("lv_active", "") == "active",
            move_pv=r.get("move_pv", ""), copy_percent=float(copy) if copy else None, devices=devices,
        ))
    return out


@dataclass(frozen=True)
class Segment:
    """A stretch of the LV: ``size`` bytes from ``lv_start`` in the LV, on ``device`` (a linear segment)."""

    lv_start: int
    size: int
    device: str


def parse_segments(text: str) -> list[Segment]:
    """``lvs --segments -o seg_start,seg_size,devices`` → linear segments (a striped one is left out: bsud makes
    none)."""
    out = []
    for r in parse_report(text, "seg"):
        devices = [re.sub(r"\(\d+\)$", "", d) for d in r.get("devices", "").split(",") if d]
        if len(devices) == 1:
            out.append(Segment(_int(r.get("seg_start")), _int(r.get("seg_size")), devices[0]))
    return out


_PROGRESS_RE = re.compile(r"(\S+): Moved: ([\d.]+)%")
#: A device-mapper name made by LVM: VG and LV with their dashes doubled, joined by one dash.
_DM_NAME_RE = re.compile(r"^((?:[^-]|--)+)-((?:[^-]|--)+)$")


def vg_of_dm_name(name: str) -> str | None:
    """The VG of an LVM device-mapper name (``my--vg-bsud`` → ``my-vg``), None for other dm devices."""
    found = _DM_NAME_RE.match(name)
    return found.group(1).replace("--", "-") if found else None


def parse_suspended(text: str) -> list[str]:
    """dm names reported suspended by ``dmsetup info -c --noheadings --separator : -o name,suspended``."""
    names = []
    for line in text.splitlines():
        name, _, state = line.strip().partition(":")
        if name and state.strip().lower() == "suspended":
            names.append(name)
    return names


def stale_slaves(major_minor: str, sysfs: str = "/sys") -> list[str]:
    """Devices a device-mapper device (``major:minor``) still maps to although they went away.

    dm links itself under each device it opened (``<slave>/holders/dm-N``). A disk unplugged leaves its
    ``slaves`` link dangling; a disk plugged again — even under the same name and numbers — is a new device
    that dm never opened, with no such link. Either way I/O to those extents fails until the table is reloaded.
    A slave whose sysfs entry shows no ``holders`` directory at all is not judged.
    """
    base = f"{sysfs}/dev/block/{major_minor}"
    try:
        dm_name = os.path.basename(os.path.realpath(base))
        slaves = sorted(os.listdir(f"{base}/slaves"))
    except OSError:
        return []
    stale = []
    for slave in slaves:
        entry = f"{base}/slaves/{slave}"
        if not os.path.exists(entry):
            stale.append(slave)
        elif os.path.isdir(f"{entry}/holders") and not os.path.lexists(f"{entry}/holders/{dm_name}"):
            stale.append(slave)
    return stale


_PV_FIELDS = "pv_name,vg_name,pv_size,pv_free,pv_uuid,dev_size"
_VG_FIELDS = "vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,pv_count,lv_count,vg_missing_pv_count"
_LV_FIELDS = "lv_name,vg_name,lv_size,lv_path,lv_attr,lv_active,move_pv,copy_percent,devices"


class Lvm:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    # -- observation ---------------------------------------------------------------------------

    def suspended(self, vg: str) -> list[str]:
        """This VG's device-mapper devices left suspended (a kill in the middle of lvreduce/pvmove…)."""
        out = self.runner.run(["dmsetup", "info", "-c", "--noheadings", "--separator", ":", "-o", "name,suspended"],
                              timeout=60, check=False, quiet=True)
        if out.returncode != 0:
            return []
        return [name for name in parse_suspended(out.stdout) if vg_of_dm_name(name) == vg]

    def resume(self, dm_name: str) -> None:
        self.runner.run(["dmsetup", "resume", dm_name], timeout=120)

    def missing_pvs(self, vg: str) -> list[str]:
        """UUIDs of the VG's PVs whose device is absent (or that LVM flagged missing)."""
        out = self.runner.run(["lvm", "pvs", "--reportformat", "json", "-o", "pv_name,pv_uuid,pv_missing",
                               "--select", f"vg_name={vg}"], timeout=120, check=False, ok_codes=(0, 5), quiet=True)
        if out.returncode != 0:
            return []
        return [r.get("pv_uuid", "?") for r in parse_report(out.stdout, "pv")
                if r.get("pv_missing") == "missing" or r.get("pv_name", "").startswith("[unknown]")]

    def stale_devices(self, lv_path: str) -> list[str]:
        """Kernel names of the devices the active LV maps to that went away (see :func:`stale_slaves`)."""
        try:
            rdev = os.stat(lv_path).st_rdev
        except OSError:
            return []
        return stale_slaves(f"{os.major(rdev)}:{os.minor(rdev)}")

    def pvs(self, devices: list[str] | None = None, only: bool = False) -> list[PhysicalVolume]:
        """PVs among ``devices`` (all when None); devices that are not PVs are left out. ``only``: LVM looks at
        these devices and no other (``--devices``), so that a PV it also sees elsewhere (a clone's duplicate) is
        reported on them."""
        if devices == []:
            return []
        argv = ["lvm", "pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _PV_FIELDS,
                *(["--devices", ",".join(devices or [])] if only else []), *(devices or [])]
        # Exit 5 with the found ones still reported when some devices are not PVs.
        return parse_pvs(self.runner.run(argv, timeout=120, ok_codes=(0, 5), quiet=True).stdout)

    def vg(self, name: str) -> VolumeGroup | None:
        # Exit 5 is how vgs says "not found": an expected answer (an offline drive), logged at debug level.
        out = self.runner.run(["lvm", "vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
                               _VG_FIELDS, name], timeout=120, check=False, ok_codes=(0, 5), quiet=True)
        found = parse_vgs(out.stdout) if out.returncode == 0 else []
        return found[0] if found else None

    def lvs(self, vg: str) -> list[LogicalVolume]:
        out = self.runner.run(["lvm", "lvs", "-a", "--reportformat", "json", "--units", "b", "--nosuffix",
                               "-o", _LV_FIELDS, vg], timeout=120, check=False, ok_codes=(0, 5), quiet=True)
        return parse_lvs(out.stdout) if out.returncode == 0 else []

    def lv(self, vg: str) -> LogicalVolume | None:
        for lv in self.lvs(vg):
            if lv.name == LV_NAME:
                return lv
        return None

    def segments(self, vg: str) -> list[Segment]:
        """Where the drive's LV lies on its PVs, stretch by stretch."""
        out = self.runner.run(["lvm", "lvs", "--segments", "--reportformat", "json", "--units", "b", "--nosuffix",
                               "-o", "seg_start,seg_size,devices", f"{vg}/{LV_NAME}"], timeout=120, check=False,
                              ok_codes=(0, 5), quiet=True)
        return parse_segments(out.stdout) if out.returncode == 0 else []

    def moves_in_progress(self, vg: str) -> list[LogicalVolume]:
        return [lv for lv in self.lvs(vg) if lv.is_pvmove]

    # -- actions -------------------------------------------------------------------------------

    def pvcreate(self, device: str) -> None:
        """Never -y / -ff: with stdin closed pvcreate refuses a device carrying a signature."""
        self.runner.run(["lvm", "pvcreate", device], timeout=120)

    def vgcreate(self, vg: str, devices: list[str]) -> None:
        self.runner.run(["lvm", "vgcreate", vg, *devices], timeout=120)

    def vgextend(self, vg: str, device: str) -> None:
        self.runner.run(["lvm", "vgextend", vg, device], timeout=120)

    def lvcreate_full(self, vg: str) -> None:
        """The one LV of 100% of the VG (no signature wiping: the gate checks the LV afterwards)."""
        self.runner.run(["lvm", "lvcreate", "-n", LV_NAME, "-l", "100%FREE", "--wipesignatures", "n", vg],
                        timeout=300)

    def lvextend_full(self, vg: str) -> bool:
        """Extend the LV over the VG's free extents; False when there were none (lvextend would exit 5)."""
        group = self.vg(vg)
        if group is None or group.free < max(group.extent_size, 1):
            return False
        self.runner.run(["lvm", "lvextend", "-l", "+100%FREE", f"{vg}/{LV_NAME}"], timeout=300)
        return True

    def lvreduce(self, vg: str, size_bytes: int) -> None:
        """Reduce the LV to ``size_bytes`` (rounded up to an extent by LVM).

        ``--yes`` answers lvreduce's "really reduce?" prompt: callers shrink btrfs below this
        size first and verify it, which is what makes the reduction safe.
        """
        self.runner.run(["lvm", "lvreduce", "--yes", "-L", f"{int(size_bytes)}b", f"{vg}/{LV_NAME}"],
                        timeout=300)

    def pvmove(self, device: str | None = None, *, interval: int = 5) -> None:
        """Move extents off ``device`` (or, without one, resume an interrupted move), logging progress."""
        argv = ["lvm", "pvmove", "-i", str(interval)]
        if device:
            argv.append(device)

        def progress(line: str) -> None:
            m = _PROGRESS_RE.search(line)
            if m:
                log.info("pvmove progress", device=m.group(1), percent=float(m.group(2)))

        self.runner.run(argv, timeout=PVMOVE_TIMEOUT, on_line=progress)

    def pvmove_abort(self, device: str) -> None:
        """Stop the move off ``device`` (run while ``pvmove`` runs, from another thread). Without ``--atomic``
        (bsud never uses it), the segments already mirrored stay on their new PV and the one being copied stays on
        ``device``; the pvmove LV goes away and the LV is whole. The moving ``pvmove`` command then ends."""
        self.runner.run(["lvm", "pvmove", "--abort", device], timeout=PVMOVE_ABORT_TIMEOUT)

    def vgreduce(self, vg: str, device: str) -> None:
        self.runner.run(["lvm", "vgreduce", vg, device], timeout=120)

    def pvremove(self, device: str) -> None:
        self.runner.run(["lvm", "pvremove", device], timeout=120)

    def refresh(self, vg: str) -> None:
        """Reload the LV's table from the metadata onto the PVs' devices as they are now."""
        self.runner.run(["lvm", "lvchange", "--refresh", f"{vg}/{LV_NAME}"], timeout=300)

    def vgimportclone(self, vg: str, devices: list[str], import_devices: bool) -> None:
        """The VG on ``devices`` (a clone: all its PVs) given new PV and VG UUIDs and the name ``vg``, imported;
        ``import_devices``: and listed in LVM's devices file."""
        self.runner.run(["lvm", "vgimportclone", "--basevgname", vg, *(["--importdevices"] if import_devices else []),
                         *devices], timeout=300)

    def vgchange(self, vg: str, active: bool) -> None:
        self.runner.run(["lvm", "vgchange", "-a", "y" if active else "n", vg], timeout=300)

    # -- devices file (use_devicesfile=1, the RHEL 9 default) --------------------------------------

    def devices_file_enabled(self) -> bool:
        out = self.runner.run(["lvm", "config", "--typeconfig", "full", "devices/use_devicesfile"],
                              timeout=60, check=False, quiet=True)
        return out.returncode == 0 and out.stdout.strip().endswith("=1")

    def devices_file_has(self, device: str) -> bool:
        out = self.runner.run(["lvm", "lvmdevices"], timeout=60, check=False, quiet=True)
        return device in out.stdout

    def devices_file_add(self, device: str) -> None:
        """Register a (verified, ours) device so LVM sees it after a re-attach."""
        self.runner.run(["lvm", "lvmdevices", "--adddev", device], timeout=60)

