"""Smallest proof that the VM lane runs where it should: device-mapper, udevd, LVM activation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm


def test_device_mapper_and_udev_are_there():
    assert Path("/dev/mapper/control").exists()
    assert Path("/run/udev/control").exists()
    assert os.environ.get("BSUD_IN_VM") == "1"
