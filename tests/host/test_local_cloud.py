"""The local provider on real loop devices: same interface and tag semantics as the cloud."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest

from bsud.cloud.base import VolumeOptions, volumes_by_drive
from bsud.cloud.local import GIB, LocalCloud
from bsud.config import CloudSettings
from bsud.errors import CloudError, VolumeStateError

pytestmark = pytest.mark.host


def loops_of(state_dir: Path) -> list[str]:
    out = subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True, check=True).stdout
    devices = json.loads(out).get("loopdevices", []) if out.strip() else []
    return [d["name"] for d in devices if (d.get("back-file") or "").startswith(str(state_dir))]


@pytest.fixture
def state_dir(tmp_path: Path):
    yield tmp_path / "state"
    for dev in loops_of(tmp_path / "state"):
        subprocess.run(["umount", dev], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.fixture
def local(state_dir: Path) -> LocalCloud:
    cloud = LocalCloud(CloudSettings(provider="local", state_dir=str(state_dir), instance_id="i-test"))
    cloud.poll_interval = 0.01
    return cloud


def test_lifecycle_create_attach_detach_delete(local: LocalCloud, state_dir: Path):
    vol = local.create_volume("data", 2, "gp2")
    image = state_dir / "volumes" / f"{vol.id}.img"
    assert image.stat().st_size == 2 * GIB
    assert image.stat().st_blocks == 0  # sparse
    assert vol.state == "available" and vol.drive == "data"

    device = local.attach_volume(vol.id)
    assert device == "/dev/xvdb"
    attached = local.wait_attached(vol.id, timeout=5)
    assert attached.state == "in-use" and attached.attachment_to("i-test").device == "/dev/xvdb"
    (loop,) = loops_of(state_dir)
    assert Path(f"/sys/block/{os.path.basename(loop)}/size").read_text().strip() == str(2 * GIB // 512)
    assert local.attach_volume(vol.id) == "/dev/xvdb"  # idempotent, no second loop device
    assert len(loops_of(state_dir)) == 1

    second = local.create_volume("data", 1, "gp2")
    assert local.attach_volume(second.id) == "/dev/xvdc"

    with pytest.raises(VolumeStateError):
        local.delete_volume(vol.id)
    local.detach_volume(vol.id)
    assert local.wait_detached(vol.id, timeout=5).state == "available"
    local.delete_volume(vol.id)
    assert not image.exists()
    assert local.get_volume(vol.id) is None
    local.delete_volume(vol.id)  # idempotent
    assert [v.id for v in local.list_volumes()] == [second.id]


def test_tags_group_volumes_per_drive(local: LocalCloud):
    a = local.create_volume("alpha", 1, "gp2")
    b = local.create_volume("beta", 1, "io1", VolumeOptions(iops=300, tags={"team": "ops"}))
    grouped = volumes_by_drive(local.list_volumes())
    assert [v.id for v in grouped["alpha"]] == [a.id]
    assert grouped["beta"][0].iops == 300 and grouped["beta"][0].tags["team"] == "ops"


def test_mounted_volume_is_not_detached(local: LocalCloud, tmp_path: Path):
    vol = local.create_volume("data", 1, "gp2")
    local.attach_volume(vol.id)
    (loop,) = loops_of(Path(local.settings.state_dir))
    subprocess.run(["mkfs.btrfs", "-q", "-K", loop], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", loop, str(mnt)], check=True)
    try:
        with pytest.raises(CloudError) as info:
            local.detach_volume(vol.id)
        assert info.value.temporary and "mounted" in str(info.value)
        assert loops_of(Path(local.settings.state_dir)) == [loop]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    local.detach_volume(vol.id)
    assert loops_of(Path(local.settings.state_dir)) == []


def _create_many(state_dir: str, drive: str, count: int) -> None:
    cloud = LocalCloud(CloudSettings(provider="local", state_dir=state_dir, instance_id="i-test"))
    for _ in range(count):
        cloud.create_volume(drive, 1, "gp2")


def test_two_processes_at_once_lose_nothing(local: LocalCloud, state_dir: Path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_create_many, args=(str(state_dir), f"d{i}", 10)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    grouped = volumes_by_drive(local.list_volumes())
    assert len(grouped["d0"]) == 10 and len(grouped["d1"]) == 10


def test_crash_leftovers_heal(local: LocalCloud, state_dir: Path):
    vol = local.create_volume("data", 1, "gp2")
    image = state_dir / "volumes" / f"{vol.id}.img"
    image.unlink()  # as if killed between the metadata write and the file
    orphan = state_dir / "volumes" / "vol-deadbeef.img"
    orphan.write_bytes(b"")  # as if killed between metadata removal and unlink
    assert [v.id for v in local.list_volumes()] == [vol.id]
    assert image.exists() and not orphan.exists()
