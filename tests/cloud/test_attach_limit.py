"""A VM that takes no more volumes (issue 21), against moto: AWS's ``AttachmentLimitExceeded`` (which moto never
answers: injected) becomes one permanent error; Outscale's fixed limit is counted before asking; and under a running
daemon the drive is blocked with one line, the volume it created for nothing is deleted, and no other is created —
also when bsud was killed between creating the volume and attaching it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import boto3
import pytest

from bsud.errors import AttachmentLimitError
from bsud.naming import NEW, STATE_TAG

from ..host.daemon_harness import DaemonHarness
from .conftest import REGION, ZONE, run_instance
from .faultproxy import FaultProxy
from .test_ec2 import ec2_error

pytestmark = pytest.mark.cloud

LIMIT = (400, "AttachmentLimitExceeded", "The maximum number of attachments for this instance has been reached.")


def test_attachment_limit_exceeded_is_one_permanent_error_asked_once(cloud):
    asked = []

    def refuse(**_kwargs):
        asked.append(1)
        return ec2_error(*LIMIT)

    cloud.client.meta.events.register_first("before-send.ec2.AttachVolume", refuse)
    vol = cloud.create_volume("d", 1, "gp2")
    with pytest.raises(AttachmentLimitError) as info:
        cloud.attach_volume(vol.id)
    assert asked == [1]  # not retried: waiting does not help
    assert info.value.code == "AttachmentLimitExceeded" and info.value.volume_id == vol.id
    assert not info.value.temporary
    assert str(info.value).startswith(f"this VM takes no more volumes (AttachmentLimitExceeded: {LIMIT[2]}): "
                                      f"{vol.id} could not be attached. Lower max-bsu-count")


def test_an_outscale_vm_holding_40_volumes_is_full_before_asking(make_cloud, ec2, instance_id):
    """Outscale documents 40 volumes per VM, its root included, the same for every VM: counted from the VM's
    attachments, whatever code its endpoint would answer."""
    cloud = make_cloud(instance_id, provider="outscale")
    for n in range(38):  # with the root volume: 39
        vid = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
        ec2.attach_volume(VolumeId=vid, InstanceId=instance_id, Device=f"/dev/xvd{'bcdefghijklmnopqrstuvwxyz'[n % 25]}"
                          f"{'' if n < 25 else 'a'}")
    asked = []
    cloud.client.meta.events.register("before-send.ec2.AttachVolume", lambda **_: asked.append(1))
    fortieth = cloud.create_volume("d", 1, "gp2")
    cloud.attach_volume(fortieth.id)
    one_more = cloud.create_volume("d", 1, "gp2")
    with pytest.raises(AttachmentLimitError, match="it holds 40 volumes, Outscale's limit is 40 with its root"):
        cloud.attach_volume(one_more.id)
    assert asked == [1]  # the 40th was asked for; the 41st never


# --- under a running daemon ------------------------------------------------------------------------------------------

@pytest.fixture
def client(moto_endpoint: str, aws_env):
    return boto3.client("ec2", region_name=REGION, endpoint_url=moto_endpoint)


def daemon(tmp_path: Path, proxy: FaultProxy, instance: str) -> DaemonHarness:
    return DaemonHarness(tmp_path, drive="crowded", daemon={
        "cloud-refresh-seconds": 1, "volume-wait-seconds": 3, "device-wait-seconds": 3, "full-check-seconds": 0.5,
        "retry-seconds": 0.5}, cloud={
        "provider": "ec2", "endpoint": proxy.endpoint, "region": REGION, "instance-id": instance,
        "availability-zone": ZONE, "max-attempts": 2}, extra={"authentication": {"access-key": "testing",
                                                                                   "secret-key": "testing"}})


def tagged(client) -> list[dict]:
    return client.describe_volumes(Filters=[{"Name": "tag:osc.bsud.drive-name", "Values": ["crowded"]}])["Volumes"]


def blocked(st: dict) -> bool:
    return st.get("phase") == "blocked" and "this VM takes no more volumes" in (st.get("reason") or "")


def test_a_full_vm_blocks_the_drive_with_one_line_and_leaves_no_volume_behind(tmp_path: Path, proxy: FaultProxy,
                                                                               client):
    proxy.refuse["AttachVolume"] = LIMIT
    h = daemon(tmp_path, proxy, run_instance(client))
    try:
        h.start()
        st = h.wait_for("blocked", blocked, timeout=60)
        line = st["reason"]
        assert line.startswith("drive 'crowded': this VM takes no more volumes (AttachmentLimitExceeded: ") and \
            "the new volume was deleted" in line and "Lower max-bsu-count" in line and "\n" not in line
        assert st["last_error"] == line
        assert tagged(client) == []  # the volume created for nothing is gone
        time.sleep(8)  # 16 full checks: the drive needs a volume all along, the VM takes none
        st = h.status()
        assert blocked(st) and h.alive()
        assert proxy.actions.get("CreateVolume", 0) == 1 and proxy.actions.get("AttachVolume", 0) == 1
        assert proxy.actions.get("DeleteVolume", 0) == 1 and tagged(client) == []
        assert h.stop() == 0
    finally:
        h.close()


def test_killed_between_create_and_attach_the_new_volume_is_deleted_next_run_then_a_reload_tries_again(
        tmp_path: Path, proxy: FaultProxy, client):
    proxy.refuse["AttachVolume"] = LIMIT
    h = daemon(tmp_path, proxy, run_instance(client))
    try:
        h.start(crash="after:action:CreateVolume")
        assert h.wait_exit(60) == -signal.SIGKILL
        (left,) = tagged(client)
        assert {t["Key"]: t["Value"] for t in left["Tags"]}[STATE_TAG] == NEW and left["State"] == "available"
        created = proxy.actions.get("CreateVolume", 0)
        h.start()  # the next run finds it: never attached, so deleted unseen when the VM is still full
        h.wait_for("blocked", blocked, timeout=60)
        assert tagged(client) == [] and proxy.actions.get("CreateVolume", 0) == created
        del proxy.refuse["AttachVolume"]  # a person freed a slot, then reloaded
        h.signal(signal.SIGHUP)
        st = h.wait_for("attached", lambda s: s.get("phase") == "attaching" and
                        "waiting for the device" in s.get("reason", ""), timeout=60)
        (vol,) = tagged(client)
        assert vol["State"] == "in-use" and {t["Key"]: t["Value"] for t in vol["Tags"]}.get(STATE_TAG, "") == ""
        assert st["last_error"] is None and proxy.actions.get("CreateVolume", 0) == created + 1
        assert h.stop() == 0
    finally:
        h.close()
