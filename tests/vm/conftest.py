"""VM lane fixtures: moto with the hypervisor bridge, an EC2 provider per cloud flavour, cleanup."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path

import boto3
import pytest

from bsud.cloud.base import Identity, Volume
from bsud.cloud.ec2 import Ec2Cloud
from bsud.config import CloudSettings
from bsud.host.devices import DeviceWaiter, Resolution, VolumeRef

from ..host.daemon_harness import DaemonHarness

REGION, ZONE = "us-east-1", "us-east-1a"


@pytest.fixture(scope="session")
def bridge():
    if os.environ.get("BSUD_IN_VM") != "1":
        pytest.skip("vm lane: runs inside scripts/vm-test")
    from .bridge import BridgedMoto

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    moto = BridgedMoto()
    yield moto
    moto.reset()
    moto.close()


class VmCloud:
    def __init__(self, bridge, workdir: Path) -> None:
        self.bridge = bridge
        self.workdir = workdir
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=bridge.endpoint)
        image = ec2.describe_images()["Images"][0]["ImageId"]
        self.instance_id = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                                             Placement={"AvailabilityZone": ZONE})["Instances"][0]["InstanceId"]
        bridge.instance_id = self.instance_id
        self.ec2 = ec2

    def cloud(self, flavour: str) -> Ec2Cloud:
        self.bridge.flavour = flavour
        settings = CloudSettings(provider="ec2", endpoint=self.bridge.endpoint, region=REGION,
                                 instance_id=self.instance_id, availability_zone=ZONE, api_calls_per_second=100.0)
        cloud = Ec2Cloud(settings, "testing", "testing", identity=Identity(self.instance_id, ZONE, REGION))
        cloud.poll_interval = 0.05
        return cloud

    @staticmethod
    def attach(cloud: Ec2Cloud, volume: Volume) -> Resolution:
        with DeviceWaiter() as waiter:
            cloud.attach_volume(volume.id)
            attached = cloud.wait_attached(volume.id, timeout=30)
            return waiter.wait(VolumeRef.from_volume(attached, cloud.identity().instance_id), cloud.device_rules,
                               timeout=60)


@pytest.fixture
def vm(bridge, tmp_path: Path):
    urllib.request.urlopen(urllib.request.Request(f"{bridge.endpoint}/moto-api/reset", method="POST"), timeout=10)
    yield VmCloud(bridge, tmp_path)
    # Teardown: unmount what the test mounted, deactivate its VGs, unplug every disk.
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh if line.split()[4].startswith(str(tmp_path))]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    subprocess.run(["lvm", "vgchange", "-an"], capture_output=True)
    bridge.reset()
    subprocess.run(["udevadm", "settle"], capture_output=True)


def ec2_harness(vm: VmCloud, workdir: Path, drive: str, **drive_settings: object) -> DaemonHarness:
    """A daemon on an lvm drive, the EC2 provider against the bridged moto (disks hot-plugged into the VM)."""
    return DaemonHarness(
        workdir, drive=drive, layout="lvm",
        cloud={"provider": "ec2", "endpoint": vm.bridge.endpoint, "region": REGION, "instance-id": vm.instance_id,
               "availability-zone": ZONE, "api-calls-per-second": 50},
        extra={"authentication": {"access-key": "testing", "secret-key": "testing"}}, **drive_settings)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (``item.rep_call``…), for fixtures that say more when a test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
