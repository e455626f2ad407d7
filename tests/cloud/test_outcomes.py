"""The executor's cloud steps against moto report truthfully: the first run CHANGED, the same action run again with
nothing left to do UNCHANGED. (Attaching waits for the volume's block device, which moto has none of: the host lane
runs it with the local provider, tests/host/test_outcomes.py.)"""

from __future__ import annotations

import pytest

from bsud.config import DriveConfig, Layout, Provider, Target
from bsud.host.layouts import BtrfsLayout
from bsud.naming import STATE_TAG
from bsud.reconcile.execute import Executor
from bsud.reconcile.model import REMOVING, CreateVolume, DeleteVolume, DetachVolume, MarkVolume, Outcome
from bsud.runner import Runner

pytestmark = pytest.mark.cloud

CHANGED, UNCHANGED = Outcome.CHANGED, Outcome.UNCHANGED


@pytest.fixture
def executor(cloud, tmp_path) -> Executor:
    spec = DriveConfig(name="d", target=Target.ONLINE, mount_path=str(tmp_path / "not-mounted"), layout=Layout.BTRFS)
    return Executor(spec, cloud, BtrfsLayout("d", Runner()), Provider.EC2, attach_timeout=10, device_timeout=1)


def twice(executor: Executor, action) -> tuple[Outcome, Outcome]:
    return executor.run(action), executor.run(action)


def test_cloud_steps_change_once(executor: Executor, cloud, ec2, instance_id: str):
    assert executor.run(CreateVolume(size_gib=1)) is CHANGED  # each run makes a volume
    vid = executor.created
    assert twice(executor, MarkVolume(volume_id=vid, value=REMOVING)) == (CHANGED, UNCHANGED)
    assert cloud.get_volume(vid).tags[STATE_TAG] == REMOVING

    ec2.attach_volume(VolumeId=vid, InstanceId=instance_id, Device="/dev/xvdf")
    cloud.wait_attached(vid, timeout=10)
    assert twice(executor, DetachVolume(volume_id=vid)) == (CHANGED, UNCHANGED)
    assert cloud.get_volume(vid).attachment_to(instance_id) is None
    assert twice(executor, DeleteVolume(volume_id=vid)) == (CHANGED, UNCHANGED)
    assert cloud.get_volume(vid) is None


def test_a_volume_attached_elsewhere_is_not_detached_from_here(executor: Executor, cloud, ec2):
    """Nothing of it is attached here: nothing to do (the volume is not this VM's to take away)."""
    image = ec2.describe_images()["Images"][0]["ImageId"]
    other = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                              Placement={"AvailabilityZone": "us-east-1a"})["Instances"][0]["InstanceId"]
    executor.run(CreateVolume(size_gib=1))
    vid = executor.created
    ec2.attach_volume(VolumeId=vid, InstanceId=other, Device="/dev/xvdf")
    assert executor.run(DetachVolume(volume_id=vid)) is UNCHANGED
    assert cloud.get_volume(vid).attached_elsewhere(cloud.identity().instance_id) is not None


def test_a_primary_makes_its_peers_volume_and_attaches_it_to_the_peers_vm_once(cloud, ec2, tmp_path):
    """A highly available drive's Primary: a volume for the peer's drive (its name in the tag, marked new), attached
    to the peer's VM (the mark dropped) — CHANGED, then UNCHANGED; a drive that is not its peer is refused."""
    from bsud.config.ha import HaConfig
    from bsud.host.layouts import make_layout
    from bsud.naming import DRIVE_TAG, NEW
    from bsud.reconcile.execute import ActionError
    from bsud.reconcile.model import AttachPeerVolume, CreatePeerVolume

    image = ec2.describe_images()["Images"][0]["ImageId"]
    peer_vm = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                                Placement={"AvailabilityZone": "us-east-1a"})["Instances"][0]["InstanceId"]
    ha = HaConfig(drbd_resource="data", peer_drive="data-b", service_ip="10.0.0.50/24")
    spec = DriveConfig(name="data-a", target=Target.ONLINE, mount_path=str(tmp_path / "not-mounted"),
                       layout=Layout.LVM, ha=ha)
    executor = Executor(spec, cloud, make_layout(Layout.LVM, "data-a", Runner(), ("data", "/dev/drbd1000")),
                        Provider.EC2, attach_timeout=10, device_timeout=1)
    assert executor.run(CreatePeerVolume(peer_drive="data-b", size_gib=3)) is CHANGED
    vid = executor.created
    made = cloud.get_volume(vid)
    assert (made.tags[DRIVE_TAG], made.tags[STATE_TAG], made.size_gib) == ("data-b", NEW, 3)
    attach = AttachPeerVolume(volume_id=vid, peer_drive="data-b", instance_id=peer_vm)
    assert twice(executor, attach) == (CHANGED, UNCHANGED)
    attached = cloud.get_volume(vid)
    assert attached.attachment_to(peer_vm) is not None and attached.attachment_to(cloud.identity().instance_id) is None
    assert attached.tags[STATE_TAG] == ""
    with pytest.raises(ActionError, match="is not the peer of drive 'data-a'"):
        executor.run(CreatePeerVolume(peer_drive="someone-else", size_gib=1))
    own = cloud.create_volume("data-a", 1, "gp2")
    with pytest.raises(ActionError, match="not tagged"):
        executor.run(AttachPeerVolume(volume_id=own.id, peer_drive="data-b", instance_id=peer_vm))
