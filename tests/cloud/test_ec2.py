"""The EC2 provider against moto, plus the rules moto does not enforce, checked in bsud."""

from __future__ import annotations

import datetime
import threading

import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from structlog.testing import capture_logs

from bsud.cloud.base import VolumeOptions, volumes_by_drive
from bsud.naming import DRIVE_TAG
from bsud.errors import CloudError, CloudTimeout, VolumeStateError

from .conftest import ZONE, run_instance

pytestmark = pytest.mark.cloud


class _Raw:
    """Just enough of a urllib3 response for botocore to read a canned body."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *_a, **_k):
        yield self._body

    def read(self, *_a, **_k) -> bytes:
        body, self._body = self._body, b""
        return body


def ec2_error(status: int, code: str, message: str) -> AWSResponse:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>x</RequestID></Response>").encode()
    return AWSResponse("https://ec2.test/", status, {}, _Raw(body))


def test_create_is_tagged_and_listed_per_drive(cloud, ec2):
    a = cloud.create_volume("alpha", 10, "gp2")
    b = cloud.create_volume("beta", 20, "io1", VolumeOptions(iops=600))
    ec2.create_volume(AvailabilityZone=ZONE, Size=5)  # untagged: not ours
    assert a.drive == "alpha" and a.size_gib == 10 and a.zone == ZONE
    grouped = volumes_by_drive(cloud.list_volumes())
    assert sorted(grouped) == ["alpha", "beta"]  # root volume of the instance and untagged one left out
    assert [v.id for v in grouped["alpha"]] == [a.id]
    assert grouped["beta"][0].iops == 600 and grouped["beta"][0].volume_type == "io1"


def test_list_is_one_call_for_all_drives(cloud):
    for name in ("a", "b", "c"):
        cloud.create_volume(name, 1, "gp2")
    before = cloud.calls
    assert len(cloud.list_volumes()) == 3
    assert cloud.calls - before == 1


def test_attach_chooses_free_names_and_detach_delete(cloud, instance_id):
    v1 = cloud.create_volume("d", 1, "gp2")
    v2 = cloud.create_volume("d", 1, "gp2")
    dev1 = cloud.attach_volume(v1.id)
    cloud.wait_attached(v1.id, timeout=5)
    dev2 = cloud.attach_volume(v2.id)
    assert dev1 != dev2
    assert dev1.startswith("/dev/xvd") and dev2.startswith("/dev/xvd")
    assert cloud.attach_volume(v1.id) == dev1  # idempotent: already ours
    got = cloud.wait_attached(v2.id, timeout=5)
    assert got.attachment_to(instance_id).device == dev2
    cloud.detach_volume(v1.id)
    assert cloud.wait_detached(v1.id, timeout=5).state == "available"
    cloud.detach_volume(v1.id)  # idempotent
    cloud.delete_volume(v1.id)
    cloud.wait_deleted(v1.id, timeout=5)
    assert cloud.get_volume(v1.id) is None
    cloud.delete_volume(v1.id)  # idempotent


def test_device_names_known_to_the_api_are_not_reused(cloud, ec2, instance_id):
    outsider = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    ec2.attach_volume(VolumeId=outsider, InstanceId=instance_id, Device="/dev/xvdb")
    mine = cloud.create_volume("d", 1, "gp2")
    assert cloud.attach_volume(mine.id) not in {"/dev/xvdb", "/dev/sdb"}


def test_volume_attached_to_another_vm_is_not_taken(cloud, ec2):
    # moto would silently move it; bsud must refuse and say where it is.
    other = run_instance(ec2)
    vol = cloud.create_volume("d", 1, "gp2")
    ec2.attach_volume(VolumeId=vol.id, InstanceId=other, Device="/dev/xvdf")
    with pytest.raises(VolumeStateError) as info:
        cloud.attach_volume(vol.id)
    assert other in str(info.value) and vol.id in str(info.value)
    assert not info.value.temporary
    with pytest.raises(VolumeStateError):
        cloud.wait_attached(vol.id, timeout=1)


def test_detach_leaves_other_vms_alone(cloud, ec2):
    other = run_instance(ec2)
    vol = cloud.create_volume("d", 1, "gp2")
    ec2.attach_volume(VolumeId=vol.id, InstanceId=other, Device="/dev/xvdf")
    cloud.detach_volume(vol.id)
    assert cloud.get_volume(vol.id).attachments[0].instance_id == other


def test_delete_refuses_attached_volume(cloud):
    vol = cloud.create_volume("d", 1, "gp2")
    cloud.attach_volume(vol.id)
    with pytest.raises(VolumeStateError):
        cloud.delete_volume(vol.id)


def _describe(volume_id: str, state: str, attachments=()) -> dict:
    return {"Volumes": [{
        "VolumeId": volume_id, "Size": 1, "State": state, "VolumeType": "gp2", "AvailabilityZone": ZONE,
        "CreateTime": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), "Attachments": list(attachments),
        "Tags": [{"Key": DRIVE_TAG, "Value": "d"}],
    }]}


def test_wait_times_out_with_a_clear_error(cloud, instance_id):
    stuck = {"VolumeId": "vol-1", "InstanceId": instance_id, "Device": "/dev/xvdb", "State": "attaching"}
    with Stubber(cloud.client) as stub:
        for _ in range(50):
            stub.add_response("describe_volumes", _describe("vol-1", "in-use", [stuck]))
        with pytest.raises(CloudTimeout) as info:
            cloud.wait_attached("vol-1", timeout=0.05)
    assert info.value.temporary
    assert "vol-1" in str(info.value) and "last state: in-use" in str(info.value)


def test_wait_stops_at_once_on_error_state(cloud):
    with Stubber(cloud.client) as stub:
        stub.add_response("describe_volumes", _describe("vol-2", "error"))
        with pytest.raises(VolumeStateError) as info:
            cloud.wait_available("vol-2", timeout=60)
    assert "'error'" in str(info.value) and "vol-2" in str(info.value)


def test_creating_volume_is_not_attached(cloud):
    with Stubber(cloud.client) as stub:
        stub.add_response("describe_volumes", _describe("vol-3", "creating"))
        with pytest.raises(CloudError) as info:
            cloud.attach_volume("vol-3")
    assert info.value.temporary and "still being created" in str(info.value)


def test_throttling_is_retried_by_botocore(cloud):
    seen = []

    def throttle_twice(**_kwargs):
        seen.append(1)
        if len(seen) <= 2:
            return ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.")
        return None

    requests = []
    cloud.on_request = lambda action, code, throttled: requests.append((action, code, throttled))
    cloud.client.meta.events.register_first("before-send.ec2.CreateVolume", throttle_twice)
    vol = cloud.create_volume("d", 1, "gp2")
    assert len(seen) == 3 and vol.drive == "d"
    # Each attempt is reported (the metrics' bsud_cloud_requests_total / bsud_cloud_throttled_total).
    created = [r for r in requests if r[0] == "CreateVolume"]
    assert created == [("CreateVolume", "RequestLimitExceeded", True)] * 2 + [("CreateVolume", "OK", False)]
    assert [v.id for v in cloud.list_volumes()] == [vol.id]  # retries created nothing twice
    assert cloud.calls >= 3  # the shared limiter saw every attempt


def test_persistent_throttling_becomes_a_temporary_error(make_cloud, instance_id):
    cloud = make_cloud(instance_id, max_attempts=2)
    cloud.client.meta.events.register_first(
        "before-send.ec2.DescribeVolumes", lambda **_: ec2_error(429, "RequestLimitExceeded", "slow down"))
    with pytest.raises(CloudError) as info:
        cloud.list_volumes()
    assert info.value.temporary and "RequestLimitExceeded" in str(info.value) and "DescribeVolumes" in str(info.value)


def test_endpoint_refusing_tag_specifications_falls_back_to_create_tags(cloud):
    refused = []

    def refuse_tags(request, **_kwargs):
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        if "TagSpecification" in body:
            refused.append(1)
            return ec2_error(400, "InvalidParameterValue", "TagSpecifications is not supported")
        return None

    cloud.client.meta.events.register_first("before-send.ec2.CreateVolume", refuse_tags)
    with capture_logs() as logs:
        first = cloud.create_volume("old", 2, "gp2")
        second = cloud.create_volume("old", 3, "gp2")
    assert refused == [1]  # asked once, then remembered
    assert any("TagSpecifications" in e["event"] for e in logs)
    listed = volumes_by_drive(cloud.list_volumes())["old"]
    assert {v.id for v in listed} == {first.id, second.id}


def test_permanent_error_names_call_and_volume(cloud):
    with pytest.raises(CloudError) as info:
        cloud._call("DeleteVolume", volume_id="vol-nope", VolumeId="vol-nope")
    assert "DeleteVolume on vol-nope" in str(info.value) and not info.value.temporary


def test_concurrent_drives_share_one_limiter(make_cloud, instance_id):
    cloud = make_cloud(instance_id, api_calls_per_second=5.0)
    errors = []

    def work(name: str) -> None:
        try:
            for _ in range(3):
                cloud.create_volume(name, 1, "gp2")
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"d{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cloud.list_volumes()) == 12
    assert cloud.calls >= 13 and cloud.limiter.waited > 0


def test_volume_options_reach_the_cloud(cloud, ec2):
    """Extra tags, encryption with a KMS key, gp3 IOPS and throughput: what CreateVolume is asked for."""
    options = VolumeOptions(iops=6000, throughput=500, encrypted=True, kms_key_id="alias/bsud",
                            tags={"team": "db", "cost-center": "42"})
    vol = cloud.create_volume("data", 12, "gp3", options)
    assert vol.drive == "data" and vol.tags["team"] == "db"
    (item,) = ec2.describe_volumes(VolumeIds=[vol.id])["Volumes"]
    assert (item["VolumeType"], item["Iops"], item["Throughput"]) == ("gp3", 6000, 500)
    assert item["Encrypted"] is True and item["KmsKeyId"].endswith("alias/bsud")
    assert {t["Key"]: t["Value"] for t in item["Tags"]} == {"team": "db", "cost-center": "42", DRIVE_TAG: "data"}
    plain = cloud.create_volume("data", 1, "gp2")
    (item,) = ec2.describe_volumes(VolumeIds=[plain.id])["Volumes"]
    assert item["Encrypted"] is False and {t["Key"] for t in item["Tags"]} == {DRIVE_TAG}


def test_permission_preflight_passes_with_every_permission(cloud, ec2):
    before = len(ec2.describe_volumes()["Volumes"])
    assert cloud.check_permissions() == []
    assert len(ec2.describe_volumes()["Volumes"]) == before  # DryRun: nothing made


def test_permission_preflight_names_what_is_missing(narrow_cloud):
    """moto's IAM enforcement: a user whose policy lacks ec2:DeleteVolume and ec2:DetachVolume."""
    from bsud.cloud.preflight import PermissionMissing

    narrow = narrow_cloud("bsud-narrow", ["ec2:DescribeVolumes", "ec2:DescribeInstances", "ec2:CreateVolume",
                                          "ec2:CreateTags", "ec2:AttachVolume"])
    with narrow_cloud.enforced(), pytest.raises(PermissionMissing) as info:
        narrow.check_permissions()
    assert str(info.value).startswith("the cloud refuses ec2:DetachVolume, ec2:DeleteVolume to these credentials")
    assert "docs/cloud.md" in str(info.value)


def test_an_endpoint_that_does_not_answer_is_noted_not_fatal(cloud):
    down = type(cloud)(cloud.settings.model_copy(update={"endpoint": "http://127.0.0.1:9"}), "testing", "testing",
                       identity=cloud.identity())
    (note,) = down.check_permissions()
    assert note.startswith("permissions not checked: http://127.0.0.1:9 did not answer")
