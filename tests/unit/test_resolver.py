"""The device resolver's rules on recorded block-device records (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bsud.host.devices import GIB, DeviceMismatch, VolumeRef, resolve_device

DEVICES = json.loads((Path(__file__).resolve().parents[1] / "data" / "udev_devices.json").read_text())

CASES = [
    # flavour, volume ref, expected device, rule
    ("outscale", VolumeRef("vol-aaa", 10 * GIB, "/dev/xvdc"), "/dev/sda", "scsi serial"),  # kernel name differs
    ("outscale", VolumeRef("vol-bbb", 20 * GIB, "/dev/xvdb"), "/dev/sdb", "scsi serial"),
    ("aws", VolumeRef("vol-0123456789abcdef0", 10 * GIB, "/dev/xvdf"), "/dev/nvme1n1", "nvme serial"),
    ("virtio", VolumeRef("vol-0123456789abcdef0", 10 * GIB, "/dev/xvdb"), "/dev/vdb", "virtio serial"),  # 20 chars
    ("local", VolumeRef("vol-1234abcd", 2 * GIB, "/dev/xvdb", "/var/lib/bsud/local/volumes/vol-1234abcd.img"),
     "/dev/loop0", "loop backing file"),
]


@pytest.mark.parametrize(("flavour", "ref", "device", "rule"), CASES, ids=[c[0] + "-" + c[3] for c in CASES])
def test_resolves_by_identity(flavour, ref, device, rule):
    found = resolve_device(ref, DEVICES[flavour])
    assert found is not None and (found.device, found.rule) == (device, rule)
    assert found.size_bytes == ref.size_bytes


def test_not_there_yet_is_none():
    assert resolve_device(VolumeRef("vol-zzz", GIB, "/dev/xvdq"), DEVICES["outscale"]) is None
    assert resolve_device(VolumeRef("vol-0ffffffffffffffff", GIB, "/dev/xvdg"), DEVICES["aws"]) is None


def test_identity_match_with_wrong_size_is_refused_naming_both():
    with pytest.raises(DeviceMismatch) as info:
        resolve_device(VolumeRef("vol-0123456789abcdef0", 11 * GIB, "/dev/xvdf"), DEVICES["aws"])
    text = str(info.value)
    assert "vol-0123456789abcdef0" in text and "/dev/nvme1n1" in text and str(11 * GIB) in text
    assert str(10 * GIB) in text


def test_requested_name_link_is_used_when_no_serial_rule_matches():
    devices = [dict(DEVICES["outscale"][1], serial=None)]  # no VPD serial, only Outscale's /dev/xvdb link
    found = resolve_device(VolumeRef("vol-bbb", 20 * GIB, "/dev/xvdb"), devices)
    assert found is not None and (found.device, found.rule) == ("/dev/sdb", "requested name")


def test_requested_name_holding_another_volume_is_refused():
    devices = [{"name": "vdc", "path": "/dev/xvdc", "size_bytes": 5 * GIB, "transport": "virtio",
                "serial": "vol-feedfacefeedface", "backing_file": None, "links": []}]
    with pytest.raises(DeviceMismatch) as info:
        resolve_device(VolumeRef("vol-0000000000000000", 5 * GIB, "/dev/xvdc"), devices)
    assert "vol-feedfacefeedface" in str(info.value)


def test_requested_name_with_wrong_size_is_refused():
    devices = [{"name": "xvdd", "path": "/dev/xvdd", "size_bytes": 3 * GIB, "transport": "other",
                "serial": None, "backing_file": None, "links": []}]
    with pytest.raises(DeviceMismatch):
        resolve_device(VolumeRef("vol-x", 4 * GIB, "/dev/xvdd"), devices)


def test_loop_of_another_file_is_not_taken():
    ref = VolumeRef("vol-other", 2 * GIB, None, "/var/lib/bsud/local/volumes/vol-other.img")
    assert resolve_device(ref, DEVICES["local"]) is None


def test_a_provider_resolves_only_by_its_own_rules():
    """The local provider's loop device is not an EC2 volume's, and a serial never names a local volume."""
    from bsud.cloud.ec2 import Ec2Cloud
    from bsud.cloud.local import LocalCloud

    local_ref = VolumeRef("vol-1234abcd", 2 * GIB, "/dev/xvdb", "/var/lib/bsud/local/volumes/vol-1234abcd.img")
    assert resolve_device(local_ref, DEVICES["local"], LocalCloud.device_rules).device == "/dev/loop0"
    assert resolve_device(local_ref, DEVICES["local"], Ec2Cloud.device_rules) is None
    aws_ref = VolumeRef("vol-0123456789abcdef0", 10 * GIB, "/dev/xvdf")
    assert resolve_device(aws_ref, DEVICES["aws"], Ec2Cloud.device_rules).rule == "nvme serial"
    assert resolve_device(aws_ref, DEVICES["aws"], LocalCloud.device_rules) is None


def test_every_provider_names_known_rules():
    import importlib

    from bsud.cloud import PROVIDERS
    from bsud.host.devices import RULES

    for where in PROVIDERS.values():
        module, _, name = where.partition(":")
        rules = getattr(importlib.import_module(module), name).device_rules
        assert rules and set(rules) <= set(RULES), where


def _waiter(source: str):
    from bsud.host.devices import DeviceWaiter

    waiter = DeviceWaiter.__new__(DeviceWaiter)  # no netlink monitor: its pause is a sleep
    waiter.monitor, waiter.source = None, source
    return waiter


def test_waiter_hands_out_a_disk_only_once_udev_has_initialized_it(monkeypatch):
    import bsud.host.devices as devices

    asked: list[str] = []
    monkeypatch.setattr(devices, "block_devices", lambda: DEVICES["outscale"])
    monkeypatch.setattr(devices, "udev_initialized", lambda dev: asked.append(dev) or len(asked) >= 3)
    found = _waiter("udev").wait(VolumeRef("vol-aaa", 10 * GIB, "/dev/xvdc"), devices.RULES, timeout=5)
    assert (found.device, asked) == ("/dev/sda", ["/dev/sda"] * 3)


def test_waiter_names_the_device_udev_never_finished(monkeypatch):
    import bsud.host.devices as devices

    monkeypatch.setattr(devices, "block_devices", lambda: DEVICES["outscale"])
    monkeypatch.setattr(devices, "udev_initialized", lambda dev: False)
    with pytest.raises(devices.DeviceNotFound) as info:
        _waiter("udev").wait(VolumeRef("vol-aaa", 10 * GIB, "/dev/xvdc"), devices.RULES, timeout=0.2)
    assert "vol-aaa is /dev/sda" in str(info.value) and "udev has not finished" in str(info.value)
    assert info.value.temporary
    # Without udevd (kernel events or polling) there is nothing to wait for beyond sysfs.
    found = _waiter("kernel").wait(VolumeRef("vol-aaa", 10 * GIB, "/dev/xvdc"), devices.RULES, timeout=0.2)
    assert found.device == "/dev/sda"
