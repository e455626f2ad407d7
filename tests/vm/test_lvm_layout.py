"""The lvm layout for real: PVs, VG, LV, btrfs, grow, remove with data, pvmove resume, devices file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bsud.naming import DRIVE_TAG
from bsud.host import mounts
from bsud.host.layouts import LvmLayout
from bsud.runner import Runner

from ..host.conftest import verify_files, write_files

pytestmark = pytest.mark.vm

GIB = 1024**3


def lvm_drive_on_two_volumes(vm, cloud, drive: str, mnt: str):
    """An lvm-layout drive: btrfs made and mounted on a first 1 GiB volume, a second one in the VG (LV not grown:
    joined as to a drive not in use; joined with the mount point, the LV and btrfs would grow over it at once)."""
    tags = {DRIVE_TAG: drive}
    layout = LvmLayout(drive, Runner())
    v1, v2 = cloud.create_volume(drive, 1, "gp2"), cloud.create_volume(drive, 1, "gp2")
    r1 = vm.attach(cloud, v1)
    layout.join(r1, tags, None)
    layout.ensure_filesystem()
    layout.mount([r1.device], mnt)
    r2 = vm.attach(cloud, v2)
    layout.join(r2, tags, None)
    return layout, r1, r2


def test_lvm_end_to_end_grow_and_remove_with_data(vm, tmp_path: Path):
    drive = "lvmdrive"
    tags = {DRIVE_TAG: drive}
    cloud = vm.cloud("outscale")
    layout = LvmLayout(drive, Runner())
    mnt = str(tmp_path / "mnt")
    v1 = cloud.create_volume(drive, 1, "gp2")
    r1 = vm.attach(cloud, v1)
    layout.join(r1, tags, None)
    layout.join(r1, tags, None)  # idempotent
    layout.ensure_filesystem()
    layout.ensure_filesystem()  # idempotent: btrfs already there
    state = layout.observe([r1.device])
    assert state.members == {r1.device} and state.has_filesystem and state.active
    assert Path(f"/dev/mapper/{drive}-bsud").exists()
    layout.mount([r1.device], mnt)
    sums = write_files(Path(mnt), 2, 100, "a")
    size_one = layout.usage(mnt).size

    v2 = cloud.create_volume(drive, 1, "gp2")
    r2 = vm.attach(cloud, v2)
    layout.join(r2, tags, mnt)  # joined to a mounted drive: the LV and btrfs grow over it at once
    assert layout.grow(mnt) is False  # nothing left to grow into
    assert layout.usage(mnt).size > 1.9 * size_one
    assert layout.lvm.vg(drive).pv_count == 2
    sums |= write_files(Path(mnt), 2, 100, "b")

    layout.remove_device(r1.device, mnt)
    layout.remove_device(r1.device, mnt)  # idempotent: already out
    assert layout.lvm.vg(drive).pv_count == 1
    assert layout.lvm.pvs([r1.device]) == []
    assert {d for lv in layout.lvm.lvs(drive) for d in lv.devices} == {r2.device}
    verify_files(sums)
    cloud.detach_volume(v1.id)
    cloud.wait_detached(v1.id, timeout=30)
    cloud.delete_volume(v1.id)

    layout.unmount(mnt)
    layout.deactivate([r2.device])
    assert not layout.observe([r2.device]).active
    layout.mount([r2.device], mnt)  # activates again
    verify_files(sums)
    layout.unmount(mnt)


def test_pvmove_killed_midway_is_resumed(vm, tmp_path: Path):
    drive = "movedrive"
    cloud = vm.cloud("aws")
    mnt = str(tmp_path / "mnt")
    layout, r1, r2 = lvm_drive_on_two_volumes(vm, cloud, drive, mnt)  # the LV stays on r1: free space on r2
    sums = write_files(Path(mnt), 3, 100)

    mover = subprocess.Popen(["lvm", "pvmove", "-i", "1", r1.device], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not layout.lvm.moves_in_progress(drive):
        assert time.monotonic() < deadline, "pvmove never started"
        assert mover.poll() is None, "pvmove finished before it could be interrupted"
        time.sleep(0.05)
    mover.send_signal(signal.SIGKILL)
    mover.wait()
    assert layout.lvm.moves_in_progress(drive), "the interrupted move should be visible"

    layout.remove_device(r1.device, mnt)  # resumes the move, then takes the PV out
    assert not layout.lvm.moves_in_progress(drive)
    assert layout.lvm.pvs([r1.device]) == []
    assert layout.lvm.vg(drive).pv_count == 1
    verify_files(sums)
    layout.unmount(mnt)


def test_devices_file_reattached_volumes_are_imported(vm, tmp_path: Path, monkeypatch):
    conf = tmp_path / "lvm"
    (conf / "devices").mkdir(parents=True)
    (conf / "lvm.conf").write_text("devices {\n    use_devicesfile = 1\n}\n")
    monkeypatch.setenv("LVM_SYSTEM_DIR", str(conf))
    drive = "devfiledrive"
    tags = {DRIVE_TAG: drive}
    cloud = vm.cloud("virtio")
    layout = LvmLayout(drive, Runner())
    assert layout.lvm.devices_file_enabled()
    mnt = str(tmp_path / "mnt")
    vols = [cloud.create_volume(drive, 1, "gp2") for _ in range(2)]
    res = [vm.attach(cloud, v) for v in vols]
    for r in res:
        layout.join(r, tags, mnt if r is res[1] else None)
        if r is res[0]:
            layout.ensure_filesystem()
            layout.mount([r.device], mnt)
    layout.grow(mnt)
    sums = write_files(Path(mnt), 2, 50)
    layout.unmount(mnt)
    layout.deactivate([r.device for r in res])
    for v in vols:
        cloud.detach_volume(v.id)
        cloud.wait_detached(v.id, timeout=30)

    # Another VM: its devices file exists (LVM ignores a missing one) but does not list these disks.
    (conf / "devices" / "system.devices").write_text("# LVM uses devices listed in this file.\nVERSION=1.1.1\n")
    res = [vm.attach(cloud, v) for v in vols]
    devices = [r.device for r in res]
    assert layout.observe(devices).members == frozenset(), "LVM should not see unknown devices"
    layout.mount(devices, mnt)  # activate() registers the verified devices, then mounts
    assert layout.observe(devices).members == set(devices)
    assert mounts.mount_at(mnt) is not None
    verify_files(sums)
    layout.unmount(mnt)


def wait_for_no_storage_commands(timeout: float = 300) -> None:
    """Wait until no lvm or btrfs process is left running (orphans of a killed parent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and os.path.basename(argv[0].decode(errors="replace")) in ("lvm", "btrfs"):
                busy.append(pid)
        if not busy:
            return
        time.sleep(0.2)
    raise AssertionError("lvm/btrfs commands still running")


REMOVE_SCRIPT = """
import sys
from bsud.host.layouts import LvmLayout
from bsud.runner import Runner
LvmLayout(sys.argv[1], Runner()).remove_device(sys.argv[2], sys.argv[3])
"""


@pytest.mark.parametrize("kill_at", ["btrfs-shrunk", "lv-reduced"])
def test_removal_killed_between_its_steps_is_finished_by_running_it_again(vm, tmp_path: Path, kill_at: str):
    """kill -9 inside remove_device (after the btrfs shrink, after lvreduce), then run it again: no data lost."""
    import sys

    drive = f"kill{kill_at.split('-')[0]}"
    cloud = vm.cloud("virtio")
    mnt = str(tmp_path / "mnt")
    layout, r1, r2 = lvm_drive_on_two_volumes(vm, cloud, drive, mnt)
    layout.grow(mnt)
    sums = write_files(Path(mnt), 3, 60)
    lv_before = layout.lvm.lv(drive).size

    remover = subprocess.Popen([sys.executable, "-c", REMOVE_SCRIPT, drive, r1.device, mnt],
                               cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

    def reached() -> bool:
        if kill_at == "lv-reduced":
            lv = layout.lvm.lv(drive)
            return lv is not None and lv.size < lv_before
        fs = layout.fs.show(mnt)
        return fs is not None and fs.devices[0].size < lv_before

    deadline = time.monotonic() + 120
    while not reached():
        assert remover.poll() is None, "remove_device finished before the kill point"
        assert time.monotonic() < deadline, f"never reached {kill_at}"
        time.sleep(0.02)
    remover.send_signal(signal.SIGKILL)  # the process only, as `kill -9 <bsud pid>` does: a running
    remover.wait()                       # lvm/btrfs child finishes its own command
    wait_for_no_storage_commands()

    verify_files(sums)  # still all there mid-removal
    layout.remove_device(r1.device, mnt)
    assert layout.lvm.pvs([r1.device]) == []
    assert layout.lvm.vg(drive).pv_count == 1
    assert not layout.lvm.moves_in_progress(drive)
    verify_files(sums)
    layout.unmount(mnt)
    layout.mount([r2.device], mnt)
    verify_files(sums)
    layout.unmount(mnt)
