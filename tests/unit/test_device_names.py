"""Choosing an attach device name from what is already taken (pure)."""

from __future__ import annotations

import pytest

from bsud.cloud.base import candidate_device_names, choose_device_name, device_suffix


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


@pytest.mark.parametrize(("name", "suffix"), [("/dev/xvdc", "c"), ("/dev/sda1", "a"), ("/dev/xvdba", "ba"),
                                              ("/dev/vdb", "b"), ("/dev/nvme0n1", None), ("xvdc", None)])
def test_device_suffix(name, suffix):
    assert device_suffix(name) == suffix
