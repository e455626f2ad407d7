"""Device resolution through udev for each cloud flavour, on disks really hot-plugged by the bridge."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bsud.host.devices import GIB, find_device, VolumeRef

pytestmark = pytest.mark.vm

RULES = {"virtio": "virtio serial", "outscale": "scsi serial", "aws": "nvme serial"}
LINKS = {"virtio": "virtio-", "outscale": "scsi-0QEMU_QEMU_HARDDISK_sd", "aws": "nvme-"}


@pytest.mark.parametrize("flavour", ["virtio", "outscale", "aws"])
def test_attach_resolve_detach(vm, flavour):
    cloud = vm.cloud(flavour)
    first = cloud.create_volume("resolve", 1, "gp2")
    second = cloud.create_volume("resolve", 2, "gp2")
    r1 = vm.attach(cloud, first)
    r2 = vm.attach(cloud, second)
    me = cloud.identity().instance_id
    for res, vol in ((r1, first), (r2, second)):
        assert res.rule == RULES[flavour]
        assert res.size_bytes == vol.size_gib * GIB
        requested = cloud.get_volume(vol.id).attachment_to(me).device
        # The kernel's name is not the requested one (sda for /dev/xvdb, vdb, nvme0n1...).
        assert os.path.basename(res.device) != os.path.basename(requested)
        links = [p.name for p in Path("/dev/disk/by-id").iterdir() if os.path.realpath(p) == res.device]
        assert any(link.startswith(LINKS[flavour]) for link in links), links
    assert r1.device != r2.device

    second_requested = cloud.get_volume(second.id).attachment_to(me).device
    first_requested = cloud.get_volume(first.id).attachment_to(me).device
    cloud.detach_volume(first.id)
    cloud.wait_detached(first.id, timeout=30)
    subprocess.run(["udevadm", "settle"], check=True)
    assert find_device(VolumeRef(first.id, GIB, first_requested)) is None
    again = find_device(VolumeRef(second.id, 2 * GIB, second_requested))
    assert again is not None and again.device == r2.device
