"""Choosing an attach device name from what is already taken (pure)."""

from __future__ import annotations

import pytest

from bsud.cloud.base import candidate_device_names, choose_device_name
from bsud.naming import device_suffix
from bsud.config import Provider
from bsud.config.catalogue import ATTACH_LIMITS, DEVICE_NAMES
from bsud.errors import AttachmentLimitError


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        ([], "/dev/xvdb"),
        (["/dev/sda1"], "/dev/xvdb"),
        (["/dev/xvda", "/dev/xvdb"], "/dev/xvdc"),
        (["/dev/sdb", "/dev/sdc"], "/dev/xvdd"),       # sdX and xvdX name the same slot
        (["/dev/xvdb", "/dev/xvdd"], "/dev/xvdc"),     # gaps are reused
        ([f"/dev/xvd{c}" for c in "bcdefghijklmnopqrstuvwxyz"], "/dev/xvdba"),
        (["/dev/nvme1n1", "", "junk"], "/dev/xvdb"),
    ],
)
def test_choose_device_name(taken, expected):
    assert choose_device_name(taken) == expected


def test_candidates_are_valid_names():
    names = candidate_device_names()
    assert names[0] == "/dev/xvdb" and "/dev/xvda" not in names
    assert all(device_suffix(n) and n[8] != "a" for n in names)
    assert len(names) == len(set(names))


def test_every_name_taken_is_a_full_vm_and_the_catalogue_knows_how_many():
    """What max-bsu-count may reach where the cloud documents no limit (ec2, local) is this range."""
    assert len(candidate_device_names()) == DEVICE_NAMES == ATTACH_LIMITS[Provider.LOCAL].volumes
    with pytest.raises(AttachmentLimitError, match="every device name bsud gives, /dev/xvdb to /dev/xvdzz, is taken"):
        choose_device_name(candidate_device_names())


@pytest.mark.parametrize(("name", "suffix"), [("/dev/xvdc", "c"), ("/dev/sda1", "a"), ("/dev/xvdba", "ba"),
                                              ("/dev/vdb", "b"), ("/dev/nvme0n1", None), ("xvdc", None)])
def test_device_suffix(name, suffix):
    assert device_suffix(name) == suffix
