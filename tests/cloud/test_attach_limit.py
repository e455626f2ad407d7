"""A VM that takes no more volumes (issue 21), against moto: AWS's ``AttachmentLimitExceeded`` (which moto never
answers: injected) becomes one permanent error; Outscale's fixed limit is counted before asking."""

from __future__ import annotations

import pytest

from bsud.errors import AttachmentLimitError

from .conftest import ZONE
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
