"""Host lane fixtures: a local cloud in a temp dir, its loop devices and mounts torn down after."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from bsud.cloud.local import LocalCloud
from bsud.config import CloudSettings
from bsud.host.devices import DeviceWaiter, Resolution, VolumeRef
from bsud.runner import Runner


def loops_under(directory: Path) -> list[str]:
    out = subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True).stdout
    devices = json.loads(out).get("loopdevices", []) if out.strip() else []
    return [d["name"] for d in devices if (d.get("back-file") or "").startswith(str(directory))]


def teardown_dir(directory: Path) -> None:
    """Unmount everything under ``directory`` and release its loop devices (retried: btrfs may lag)."""
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh if line.split()[4].startswith(str(directory))]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    for _ in range(20):
        loops = loops_under(directory)
        if not loops:
            return
        for dev in loops:
            subprocess.run(["btrfs", "device", "scan", "--forget", dev], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        time.sleep(0.2)


@pytest.fixture
def workdir(tmp_path: Path):
    yield tmp_path
    teardown_dir(tmp_path)


@pytest.fixture
def local(workdir: Path) -> LocalCloud:
    cloud = LocalCloud(CloudSettings(provider="local", state_dir=str(workdir / "state"), instance_id="i-host"))
    cloud.poll_interval = 0.01
    return cloud


@pytest.fixture
def runner() -> Runner:
    return Runner()


def attach(local: LocalCloud, volume_id: str) -> Resolution:
    """Attach and find the device the way the engine does: monitor first, then attach, then wait."""
    with DeviceWaiter() as waiter:
        local.attach_volume(volume_id)
        vol = local.wait_attached(volume_id, timeout=10)
        return waiter.wait(VolumeRef.from_volume(vol, local.identity().instance_id), local.device_rules, timeout=20)


def write_files(directory: Path, count: int, size_mib: int, prefix: str = "f") -> dict[str, str]:
    sums = {}
    for i in range(count):
        data = os.urandom(size_mib * 1024 * 1024)
        path = directory / f"{prefix}{i}.bin"
        path.write_bytes(data)
        sums[str(path)] = hashlib.sha256(data).hexdigest()
    os.sync()
    return sums


def verify_files(sums: dict[str, str]) -> None:
    subprocess.run(["sync"], check=True)
    for path, digest in sums.items():
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest, f"{path} changed"


@pytest.fixture
def btrfs_loop(workdir: Path):
    """A fresh 1 GiB btrfs on a loop device (not mounted) and an empty directory to mount it on."""
    image = workdir / "fs.img"
    subprocess.run(["truncate", "-s", "1G", str(image)], check=True)
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                          text=True).stdout.strip()
    subprocess.run(["mkfs.btrfs", "-q", "-f", loop], check=True, capture_output=True)
    point = workdir / "mnt"
    point.mkdir()
    yield loop, str(point)
