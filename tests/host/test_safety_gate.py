"""The safety gate on real devices: foreign data is refused and left exactly as it was."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from bsud.naming import DRIVE_TAG
from bsud.host.layouts import BtrfsLayout, LvmLayout
from bsud.host.safety import BLANK, OWN, ForeignDevice

from .conftest import attach

pytestmark = pytest.mark.host

DRIVE = "gatetest"
TAGS = {DRIVE_TAG: DRIVE}


def digest(device: str, size: int = 4 * 1024 * 1024) -> str:
    with open(device, "rb") as fh:
        return hashlib.sha256(fh.read(size)).hexdigest()


@pytest.mark.parametrize("layout_class", [BtrfsLayout, LvmLayout], ids=["btrfs", "lvm"])
def test_device_with_ext4_is_refused_and_untouched(local, runner, workdir: Path, layout_class):
    vol = local.create_volume(DRIVE, 1, "gp2")
    res = attach(local, vol.id)
    subprocess.run(["mkfs.ext4", "-q", res.device], check=True)
    mnt = workdir / "ext4"
    mnt.mkdir()
    subprocess.run(["mount", res.device, str(mnt)], check=True)
    (mnt / "precious.txt").write_text("keep me")
    subprocess.run(["umount", str(mnt)], check=True)
    before = digest(res.device)

    layout = layout_class(DRIVE, runner)
    with pytest.raises(ForeignDevice) as info:
        layout.join(res, TAGS, None)
    assert res.device in str(info.value) and "TYPE=ext4" in str(info.value)
    if layout_class is BtrfsLayout:
        with pytest.raises(ForeignDevice):
            layout.ensure_filesystem(res, TAGS)
    assert digest(res.device) == before
    subprocess.run(["mount", res.device, str(mnt)], check=True)
    assert (mnt / "precious.txt").read_text() == "keep me"
    subprocess.run(["umount", str(mnt)], check=True)


def test_another_drives_btrfs_is_refused(local, runner):
    vol = local.create_volume(DRIVE, 1, "gp2")
    res = attach(local, vol.id)
    other = BtrfsLayout("otherdrive", runner)
    other.ensure_filesystem(res, {DRIVE_TAG: "otherdrive"})
    before = digest(res.device)
    with pytest.raises(ForeignDevice) as info:
        BtrfsLayout(DRIVE, runner).join(res, TAGS, None)
    assert "LABEL=bsud-otherdrive" in str(info.value)
    assert digest(res.device) == before


def test_volume_tagged_for_another_drive_is_refused(local, runner):
    vol = local.create_volume("otherdrive", 1, "gp2")
    res = attach(local, vol.id)
    with pytest.raises(ForeignDevice) as info:
        BtrfsLayout(DRIVE, runner).ensure_filesystem(res, dict(vol.tags))
    assert "not tagged" in str(info.value)
    assert subprocess.run(["blkid", "-p", res.device], capture_output=True).returncode == 2


def test_blank_then_own(local, runner):
    vol = local.create_volume(DRIVE, 1, "gp2")
    res = attach(local, vol.id)
    layout = BtrfsLayout(DRIVE, runner)
    assert layout.gate(res, TAGS) == BLANK
    layout.ensure_filesystem(res, TAGS)
    assert layout.gate(res, TAGS) == OWN


def test_lvm_join_as_far_as_this_kernel_allows(local, runner, monkeypatch, workdir: Path):
    """PV and VG need no device-mapper; the LV does (tested in the VM lane)."""
    monkeypatch.setenv("LVM_SYSTEM_DIR", str(workdir / "lvm"))  # isolated lvm.conf, backups, archive
    (workdir / "lvm").mkdir()
    layout = LvmLayout(DRIVE, runner)
    v1, v2 = local.create_volume(DRIVE, 1, "gp2"), local.create_volume(DRIVE, 1, "gp2")
    r1, r2 = attach(local, v1.id), attach(local, v2.id)
    try:
        for res in (r1, r2):
            try:
                layout.join(res, TAGS, None)
            except Exception as exc:  # noqa: BLE001 - lvcreate fails without device-mapper
                assert "device-mapper" in str(getattr(exc, "stderr", exc)).lower() or \
                       "lvcreate" in str(exc)
        state = layout.observe([r1.device, r2.device])
        assert state.members == {r1.device, r2.device}
        assert layout.lvm.vg(DRIVE).pv_count == 2
        assert layout.gate(r1, TAGS) == OWN  # a PV of its own VG
        # A PV of another VG is foreign.
        v3 = local.create_volume(DRIVE, 1, "gp2")
        r3 = attach(local, v3.id)
        runner.run(["lvm", "pvcreate", r3.device], timeout=60)
        runner.run(["lvm", "vgcreate", "strangervg", r3.device], timeout=60)
        with pytest.raises(ForeignDevice) as info:
            layout.join(r3, TAGS, None)
        assert "LVM2_member" in str(info.value)
    finally:
        for vg in (DRIVE, "strangervg"):
            runner.run(["lvm", "vgremove", "-f", vg], timeout=60, check=False)
        for res in (r1, r2):
            runner.run(["lvm", "pvremove", res.device], timeout=60, check=False)
