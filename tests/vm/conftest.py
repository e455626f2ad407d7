"""VM lane fixtures: moto with the hypervisor bridge, an EC2 provider per cloud flavour, cleanup; in a pair of
guests (``PAIR_FILES`` in scripts/vmtest.py), the other guest through its agent and a second instance for it."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
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


def ec2_harness(vm: VmCloud, workdir: Path, drive: str, daemon: dict[str, object] | None = None,
                **drive_settings: object) -> DaemonHarness:
    """A daemon on an lvm drive, the EC2 provider against the bridged moto (disks hot-plugged into the VM)."""
    return DaemonHarness(
        workdir, drive=drive, layout="lvm", daemon=daemon,
        cloud={"provider": "ec2", "endpoint": vm.bridge.endpoint, "region": REGION, "instance-id": vm.instance_id,
               "availability-zone": ZONE, "api-calls-per-second": 50},
        extra={"authentication": {"access-key": "testing", "secret-key": "testing"}}, **drive_settings)


class LocalNode:
    """Guest a (this one) with the peer agent's methods, so a test drives both guests alike."""

    name = "a"

    def run(self, argv: list[str], timeout: float = 120, check: bool = True,
            input: str = "") -> subprocess.CompletedProcess[str]:  # noqa: A002 - as subprocess.run
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"on a: {argv} exited {done.returncode}\nstdout: {done.stdout}\n"
                                 f"stderr: {done.stderr}")
        return done

    @staticmethod
    def read(path: str | Path) -> bytes:
        return Path(path).read_bytes()

    @staticmethod
    def write(path: str | Path, data: bytes | str, mode: int | None = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data.encode() if isinstance(data, str) else data)
        if mode is not None:
            Path(path).chmod(mode)


@pytest.fixture(scope="session")
def peer():
    """Guest b's agent (tests/vm/peer_agent.py); at the session's end it is told to power b off."""
    if not os.environ.get("BSUD_VM_PEER"):
        pytest.skip("vm pair: runs in a pair of guests (PAIR_FILES in scripts/vmtest.py)")
    from .peer_agent import PeerClient

    client = PeerClient(os.environ["BSUD_VM_PEER"])
    yield client
    try:
        client.poweroff()
    except (OSError, RuntimeError):
        pass  # the host kills b once a has stopped, in any case
    client.close()


@dataclass
class Pair:
    """The two guests of a pair, each with an instance of its own in the one moto (in a)."""

    vm: VmCloud
    nodes: dict[str, LocalNode | object]
    #: node → its instance id: a volume attached to it is plugged into that guest
    instance_ids: dict[str, str]
    #: node → moto's endpoint as that guest reaches it
    endpoints: dict[str, str]
    devices: dict[str, list[str]] = field(default_factory=lambda: {"a": [], "b": []})

    @property
    def a(self) -> LocalNode:
        return self.nodes["a"]  # type: ignore[return-value]

    @property
    def b(self):  # noqa: ANN201 - PeerClient, imported inside the VM only
        return self.nodes["b"]

    def cloud(self, node: str, flavour: str = "virtio") -> Ec2Cloud:
        """bsud's EC2 provider as ``node``'s daemon sees it (its instance), called from here (a)."""
        self.vm.bridge.flavour = flavour
        iid = self.instance_ids[node]
        settings = CloudSettings(provider="ec2", endpoint=self.vm.bridge.endpoint, region=REGION, instance_id=iid,
                                 availability_zone=ZONE, api_calls_per_second=100.0)
        cloud = Ec2Cloud(settings, "testing", "testing", identity=Identity(iid, ZONE, REGION))
        cloud.poll_interval = 0.05
        return cloud

    def attach_new(self, node: str, size_gib: int = 1, timeout: float = 60) -> tuple[str, str]:
        """A new volume attached to ``node``'s instance (virtio-blk): its id and its device in that guest."""
        self.vm.bridge.flavour = "virtio"
        ec2 = self.vm.ec2
        vol = ec2.create_volume(Size=size_gib, AvailabilityZone=ZONE, VolumeType="gp2")["VolumeId"]
        name = f"/dev/xvd{'bcdefghijklmnop'[len(self.devices[node])]}"
        ec2.attach_volume(VolumeId=vol, InstanceId=self.instance_ids[node], Device=name)
        self.devices[node].append(vol)
        link = f"/dev/disk/by-id/virtio-{vol[:20]}"
        deadline = time.monotonic() + timeout
        while True:
            done = self.nodes[node].run(["readlink", "-e", link], check=False)  # type: ignore[attr-defined]
            if done.returncode == 0:
                return vol, done.stdout.strip()
            if time.monotonic() > deadline:
                raise AssertionError(f"{vol} attached to {node} but {link} did not appear there within {timeout} s")
            time.sleep(0.5)

    def harness(self, node: str, workdir: Path, drive: str, **drive_settings: object) -> DaemonHarness:
        """A daemon's config for ``node`` (lvm drive, the EC2 provider on that node's instance and endpoint). For a,
        the harness runs it as usual; for b, the config is also written at the same path on b: start it there with
        ``pair.b.spawn([".venv/bin/python", "-m", "bsud", "-c", str(h.config_path)])``."""
        workdir.mkdir(parents=True, exist_ok=True)
        h = DaemonHarness(
            workdir, drive=drive, layout="lvm",
            cloud={"provider": "ec2", "endpoint": self.endpoints[node], "region": REGION,
                   "instance-id": self.instance_ids[node], "availability-zone": ZONE, "api-calls-per-second": 50},
            extra={"authentication": {"access-key": "testing", "secret-key": "testing"}}, **drive_settings)
        if node != "a":
            DaemonHarness.running.remove(h)  # its log is on b
            self.nodes[node].write(h.config_path, h.config_path.read_bytes(), 0o600)  # type: ignore[attr-defined]
        return h


@pytest.fixture
def pair(vm, peer, tmp_path: Path) -> Iterator[Pair]:
    """Both guests of a pair: the agent client for b, an instance for each node (volumes attached to b's are plugged
    into b), moto's endpoint as each sees it. Teardown on b: DRBD down, VGs deactivated (a's: the vm fixture's)."""
    ec2 = vm.ec2
    image = ec2.describe_images()["Images"][0]["ImageId"]
    b_id = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": ZONE})["Instances"][0]["InstanceId"]
    vm.bridge.nodes[b_id] = "b"
    assert vm.bridge.endpoint_for_peer, "moto does not listen for the pair's other guest"
    yield Pair(vm, {"a": LocalNode(), "b": peer}, {"a": vm.instance_id, "b": b_id},
               {"a": vm.bridge.endpoint, "b": vm.bridge.endpoint_for_peer})
    for node in (peer, LocalNode()):
        mounts = node.run(["findmnt", "-rn", "-o", "TARGET"], check=False).stdout.split()
        for point in sorted((m for m in mounts if m.startswith(str(tmp_path))), reverse=True):
            node.run(["umount", "-l", point], check=False)
        node.run(["drbdadm", "down", "all"], check=False)
        node.run(["find", "/etc/drbd.d", "-name", "*.res", "-delete"], check=False)
    peer.run(["lvm", "vgchange", "-an"], check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (``item.rep_call``…), for fixtures that say more when a test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
