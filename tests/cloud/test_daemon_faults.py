"""Cloud faults under a running daemon (EC2 provider against moto's server, through a fault proxy): an outage,
a throttling storm, a volume stuck attaching, a device that never appears. The daemon keeps running, its status
or log says what is wrong in one line, and it carries on by itself once the fault is gone.

On this machine an EC2 volume never shows up as a block device (that is the VM lane's job), which is the
"device that never appears" case for free: the drive stops at attaching, bounded and retried.
"""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest

from ..host.daemon_harness import DaemonHarness
from .conftest import REGION, ZONE, run_instance
from .faultproxy import FaultProxy

pytestmark = pytest.mark.cloud

WAITS = {"cloud-refresh-seconds": 1, "volume-wait-seconds": 3, "device-wait-seconds": 3}


@pytest.fixture
def ec2(moto_endpoint: str, aws_env):
    return boto3.client("ec2", region_name=REGION, endpoint_url=moto_endpoint)


def daemon(tmp_path: Path, proxy: FaultProxy, instance: str, **drive: object) -> DaemonHarness:
    return DaemonHarness(tmp_path, drive="faulty", daemon=WAITS, cloud={
        "provider": "ec2", "endpoint": proxy.endpoint, "region": REGION, "instance-id": instance,
        "availability-zone": ZONE, "max-attempts": 2}, extra={"authentication": {"access-key": "testing",
                                                                                   "secret-key": "testing"}},
        **drive)


def tagged(ec2) -> list[dict]:
    return ec2.describe_volumes(Filters=[{"Name": "tag:osc.bsud.drive-name", "Values": ["faulty"]}])["Volumes"]


def test_api_outage_is_reported_and_survived(tmp_path: Path, proxy: FaultProxy, ec2):
    h = daemon(tmp_path, proxy, run_instance(ec2), target="offline")
    try:
        h.start()
        h.wait_for("offline", lambda s: s.get("phase") == "offline" and s.get("last_error") is None, timeout=60)
        proxy.mode = "down"
        st = h.wait_for("the outage in the status", lambda s: bool(s.get("last_error")), timeout=60)
        assert "DescribeVolumes" in st["last_error"]
        time.sleep(10)  # an outage of a while: the daemon keeps running, backing off
        assert h.alive()
        proxy.mode = "pass"
        h.wait_for("recovered", lambda s: s.get("phase") == "offline" and s.get("last_error") is None,
                   timeout=120)
        assert h.stop() == 0
    finally:
        h.close()


def test_throttling_storm_then_a_device_that_never_appears(tmp_path: Path, proxy: FaultProxy, ec2):
    proxy.mode = "throttle"
    h = daemon(tmp_path, proxy, run_instance(ec2))
    try:
        h.start()
        st = h.wait_for("throttled", lambda s: "RequestLimitExceeded" in (s.get("last_error") or ""), timeout=60)
        time.sleep(8)
        assert h.alive() and tagged(ec2) == []
        assert proxy.requests["throttle"] >= 4  # retried, with backoff, not given up
        proxy.mode = "pass"
        # The storm over, the drive goes on: its volume is created and attached; its device never appears here.
        h.wait_for("the device wait bounded", lambda s: "did not appear as a block device within 3 s" in h.tail(200),
                   timeout=120)
        h.wait_for("attaching", lambda s: s.get("phase") == "attaching" and "waiting for the device" in s["reason"],
                   timeout=60)
        assert len(tagged(ec2)) == 1 and h.alive()
        assert h.stop() == 0
    finally:
        h.close()


def test_volume_stuck_attaching(tmp_path: Path, proxy: FaultProxy, ec2):
    proxy.mode = "attaching"
    h = daemon(tmp_path, proxy, run_instance(ec2))
    try:
        h.start()
        h.wait_for("the bounded wait", lambda s: "did not become attached within 3 s (last state: in-use)" in
                   (s.get("last_error") or ""), timeout=120)
        assert h.alive()
        proxy.mode = "pass"
        st = h.wait_for("attached at last", lambda s: s.get("phase") == "attaching" and s.get("last_error") is None
                        and "waiting for the device" in s.get("reason", ""), timeout=120)
        assert len(st["volumes"]) == 1
        assert h.stop() == 0
    finally:
        h.close()


def test_an_idle_daemon_lists_the_cloud_at_most_six_times_an_hour(tmp_path: Path, proxy: FaultProxy, ec2, capsys):
    """The API budget of a fleet (issue 21): one DescribeVolumes per cloud-refresh-seconds (1200 ± 20 %) when nothing
    happens, whatever the full checks do. Periods scaled down 100 times: 36 s stand for an hour."""
    h = DaemonHarness(tmp_path, drive="idle", daemon={"cloud-refresh-seconds": 12, "full-check-seconds": 0.6,
                                                     "usage-interval-seconds": 0.25}, cloud={
        "provider": "ec2", "endpoint": proxy.endpoint, "region": REGION, "instance-id": run_instance(ec2),
        "availability-zone": ZONE}, extra={"authentication": {"access-key": "testing", "secret-key": "testing"}},
        target="offline")
    try:
        started = dict(proxy.actions)
        h.start()
        h.wait_for("offline", lambda s: s.get("phase") == "offline", timeout=60)
        time.sleep(5)
        at_start = {k: v - started.get(k, 0) for k, v in proxy.actions.items() if v != started.get(k, 0)}
        before = proxy.actions.get("DescribeVolumes", 0)
        time.sleep(36)
        in_an_hour = proxy.actions.get("DescribeVolumes", 0) - before
        with capsys.disabled():
            print(f"\nidle daemon, periods ÷100: {at_start} at start, {in_an_hour} DescribeVolumes in an "
                  "hour's worth", flush=True)
        assert 1 <= in_an_hour <= 6, proxy.actions
        assert at_start.get("DescribeVolumes", 0) <= 2 and set(at_start) <= {"DescribeVolumes"} | {
            f"{a}:DryRun" for a in ("DescribeVolumes", "DescribeInstances", "AttachVolume", "DetachVolume",
                                    "DeleteVolume", "CreateTags", "CreateVolume")}, at_start
        assert h.stop() == 0
    finally:
        h.close()
