"""Snapshots through the EC2 provider against moto: a set's tags at creation, the listing (own snapshots carrying
the set tag), a mark added later, a volume made from a snapshot, deletion (twice: the second finds nothing); and
the preflight's note when the credentials may not make the snapshot calls."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bsud.backup.restore import restore_volumes
from bsud.backup.sets import group, member_tags
from bsud.cloud.base import VolumeOptions
from bsud.config import DiskType, DriveConfig, Layout, Provider, Target
from bsud.naming import COMPLETED, SNAPSHOT_CONFIRMED_TAG, SNAPSHOT_INCOMPLETE_TAG

pytestmark = pytest.mark.cloud


def test_a_set_is_tagged_listed_restored_from_and_deleted(cloud, ec2):
    vols = [cloud.create_volume("data", size, "gp2") for size in (1, 2)]
    ec2.create_snapshot(VolumeId=vols[0].id, Description="someone else's")  # no set tag: not listed
    when = datetime(2026, 12, 5, 11, 49, 58, tzinfo=timezone.utc)
    made = [cloud.create_snapshot(v.id, f"member {i}", member_tags("data-x", "data", i, 2, "lvm", v.id, v.size_gib,
                                                                     "uuid-1", when, {"team": "a"}))
            for i, v in enumerate(vols)]
    assert [s.volume_id for s in made] == [v.id for v in vols]
    (unconfirmed,) = group(cloud.list_snapshots())
    assert not unconfirmed.restorable and unconfirmed.problems[0].startswith("never confirmed")
    cloud.tag_snapshots([s.id for s in made], SNAPSHOT_CONFIRMED_TAG, "2026-12-05T11:50:03Z")  # one CreateTags
    listed = cloud.list_snapshots()
    assert sorted(s.id for s in listed) == sorted(s.id for s in made)
    (snap_set,) = group(listed)
    assert snap_set.id == "data-x" and snap_set.count == 2 and snap_set.state == COMPLETED and snap_set.restorable
    assert snap_set.time == "2026-12-05T11:49:58Z" and snap_set.size_gib == 3 and snap_set.layout == "lvm"
    assert snap_set.members[1].tags["team"] == "a"

    restored = cloud.create_volume("copy", 2, "gp2", VolumeOptions(snapshot_id=made[1].id))
    item = ec2.describe_volumes(VolumeIds=[restored.id])["Volumes"][0]
    assert item["SnapshotId"] == made[1].id and item["Size"] == 2

    cloud.set_snapshot_tag(made[0].id, SNAPSHOT_INCOMPLETE_TAG, "a test said so")
    (marked,) = group(cloud.list_snapshots())
    assert not marked.restorable and marked.problems == ("a test said so",)

    for snap in made:
        cloud.delete_snapshot(snap.id)
        cloud.delete_snapshot(snap.id)  # gone already: nothing to do
    assert cloud.list_snapshots() == []
    assert len(ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]) >= 1  # the untagged one is not bsud's


def test_the_preflight_notes_snapshot_calls_the_credentials_may_not_make(narrow_cloud):
    narrow = narrow_cloud("bsud-nosnap", ["ec2:DescribeVolumes", "ec2:DescribeInstances", "ec2:CreateVolume",
                                          "ec2:CreateTags", "ec2:AttachVolume", "ec2:DetachVolume",
                                          "ec2:DeleteVolume"])
    with narrow_cloud.enforced():
        notes = narrow.check_permissions()
    assert notes == ["snapshots: the cloud refuses ec2:DescribeSnapshots, ec2:CreateSnapshot, ec2:DeleteSnapshot to "
                     "these credentials: 'bsud snapshot' and drives made from a snapshot set will fail; grant them "
                     "if you take snapshots (docs/cloud.md)"]


def test_volumes_restored_from_a_set_get_the_drives_volume_options(cloud, ec2):
    # an io1 volume is refused without its IOPS; a drive asked encrypted gets encrypted copies
    vols = [cloud.create_volume("orig", size, "gp2") for size in (4, 8)]
    when = datetime(2026, 12, 5, 19, 0, 0, tzinfo=timezone.utc)
    made = [cloud.create_snapshot(v.id, f"member {i}", member_tags("orig-x", "orig", i, 2, "btrfs", v.id,
                                                                     v.size_gib, "uuid-2", when))
            for i, v in enumerate(vols)]
    cloud.tag_snapshots([s.id for s in made], SNAPSHOT_CONFIRMED_TAG, "2026-12-05T19:00:05Z")
    spec = DriveConfig(name="copy", target=Target.ONLINE, mount_path="/mnt/copy", layout=Layout.BTRFS,
                       disk_type=DiskType.IO1, disk_iops_per_gib=50, encrypted=True, from_snapshot_set="orig-x",
                       tags={"team": "b"})
    assert restore_volumes(cloud, spec, Provider.EC2, "orig-x", timeout=60) is True
    items = sorted((v for v in ec2.describe_volumes()["Volumes"]
                    if {"Key": "osc.bsud.drive-name", "Value": "copy"} in v.get("Tags", [])), key=lambda v: v["Size"])
    assert [(v["Size"], v["VolumeType"], v["Iops"], v["Encrypted"], v["SnapshotId"]) for v in items] == \
        [(4, "io1", 200, True, made[0].id), (8, "io1", 400, True, made[1].id)]
    assert all({"Key": "team", "Value": "b"} in v["Tags"] for v in items)
    assert restore_volumes(cloud, spec, Provider.EC2, "orig-x", timeout=60) is False  # all made: nothing more
