"""max-bsu-count within what a VM of the provider can ever hold (issue 21): refused at load beyond it, with the
documented limit; drives that may want more than one VM holds together are a warning (they share its slots)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bsud.config import EnvSettings, InvalidConfig, parse_config

NO_ENV = EnvSettings(osc_access_key=None, osc_secret_key=None, bsud_log=None)


def load(cloud: dict[str, Any], *drives: dict[str, Any]) -> tuple[list[str], tuple[str, ...]]:
    """(problems, warnings) of a config with these drives."""
    text = json.dumps({"cloud": cloud, "drives": list(drives)})
    try:
        return [], parse_config(text, "bsud.json", NO_ENV).warnings
    except InvalidConfig as exc:
        return [str(p) for p in exc.problems], ()


def drive(name: str = "data", count: int = 10, target: str = "online") -> dict[str, Any]:
    return {"name": name, "target": target, "mount-path": f"/mnt/{name}", "max-bsu-count": count}


EC2 = {"provider": "ec2", "endpoint": "http://127.0.0.1:1"}
LOCAL = {"provider": "local", "state-dir": "/var/lib/bsud/local"}


@pytest.mark.parametrize(("cloud", "most", "line"), [
    ({}, 39, "must be between 1 and 39 (an Outscale VM holds 40 volumes, its root included; got 40)"),
    ({"provider": "aws"}, 127, "must be between 1 and 127 (the largest AWS instance types take 128 EBS volumes, the "
                               "root included; most take 27 or fewer; got 128)"),
    (EC2, 675, "must be between 1 and 675 (bsud names at most 675 devices, /dev/xvdb to /dev/xvdzz; got 676)"),
    (LOCAL, 675, "must be between 1 and 675 (bsud names at most 675 devices, /dev/xvdb to /dev/xvdzz; got 676)"),
], ids=["outscale", "aws", "ec2", "local"])
def test_max_bsu_count_beyond_what_a_vm_holds_is_refused_with_the_limit(cloud, most, line):
    assert load(cloud, drive(count=most)) == ([], ())
    assert load(cloud, drive(count=most + 1)) == ([f"bsud.json: drive 'data': field 'max-bsu-count': {line}"], ())


def test_drives_that_may_want_more_than_the_vm_holds_together_are_a_warning_not_a_refusal():
    problems, warnings = load({}, drive("a", 20), drive("b", 20), drive("c", 30, target="offline"))
    assert problems == [] and warnings == (
        "bsud.json: drives 'a', 'b' may hold up to 40 volumes together (their max-bsu-count), more than one VM takes "
        "(39: an Outscale VM holds 40 volumes, its root included); the drive that grows when the VM is full is "
        "blocked until volumes are freed",)
    assert load({}, drive("a", 20), drive("b", 19)) == ([], ())
    assert load({"provider": "aws"}, drive("a", 20), drive("b", 20)) == ([], ())  # some AWS types take 128
