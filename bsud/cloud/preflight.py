"""The permission preflight: each call bsud makes tried with ``DryRun`` at start, so that a missing permission is
one clear line at start rather than a failed scale-up when the drive fills.

Reads first (plain calls). Then the calls that change things, on a volume id that does not exist (harmless even
on an endpoint that ignored DryRun); their answer — DryRunOperation, or denied — shows that DryRun is honoured,
and only then are ``CreateTags`` (on an existing volume: some endpoints check the resource first) and
``CreateVolume`` tried.
"""

from __future__ import annotations

import re
from typing import Any

import botocore.exceptions

from bsud.cloud.base import Identity
from bsud.errors import BsudError

#: A DryRun of a call the credentials may not make (AWS; IAM-style endpoints and moto say AccessDenied).
DENIED_CODES = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})
#: Codes of an endpoint refusing a parameter it does not know (DryRun, TagSpecifications, ClientToken…).
REFUSED_PARAMETER_CODES = frozenset(
    {"UnknownParameter", "InvalidParameter", "InvalidParameterValue", "InvalidParameterCombination",
     "InvalidAction", "OperationNotPermitted", "UnsupportedOperation"}
)
#: A well-formed volume id no call ever reaches (DryRun stops before): the probes' subject.
PROBE_VOLUME = "vol-0123456789abcdef0"
#: The tag a DryRun CreateTags would set (tried only once DryRun is shown to be honoured).
PROBE_TAG = "osc.bsud.preflight"


class PermissionMissing(BsudError):
    """The credentials may not make a call bsud needs."""


def snake(operation: str) -> str:
    """``DescribeVolumes`` → ``describe_volumes`` (boto3's method names)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def check_permissions(client: Any, identity: Identity, endpoint: str) -> list[str]:
    """Try each call bsud makes with ``DryRun`` on ``client`` (nothing is changed). Raises
    :class:`PermissionMissing` naming every call these credentials may not make; returns notes on what could not
    be checked (an endpoint without DryRun, the API unreachable)."""
    me = identity.instance_id
    missing: list[str] = []
    notes: list[str] = []
    try:
        listed = client.describe_volumes(MaxResults=5).get("Volumes", [])
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        if code not in DENIED_CODES:
            return [f"permissions not checked: DescribeVolumes answered {code}"]
        missing.append("DescribeVolumes")
        listed = []
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        return [f"permissions not checked: {endpoint} did not answer ({exc})"]
    try:  # which device names are taken on this instance: a plain read too
        client.describe_instances(InstanceIds=[me])
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        if code in DENIED_CODES:
            missing.append("DescribeInstances")
        else:
            notes.append(f"DescribeInstances: permission not checked ({code})")
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        return [f"permissions not checked: {endpoint} did not answer ({exc})"]
    # First on a volume that does not exist: harmless even where DryRun were ignored, and an answer of
    # DryRunOperation (or denied) proves it is honoured. Only then the calls that would change something
    # real: a tag on an existing volume (some endpoints check the resource first), and CreateVolume.
    subject = next((v["VolumeId"] for v in listed), PROBE_VOLUME)
    calls = [
        ("AttachVolume", {"VolumeId": PROBE_VOLUME, "InstanceId": me, "Device": "/dev/xvdz"}),
        ("DetachVolume", {"VolumeId": PROBE_VOLUME}),
        ("DeleteVolume", {"VolumeId": PROBE_VOLUME}),
        ("CreateTags", {"Resources": [subject], "Tags": [{"Key": PROBE_TAG, "Value": "1"}]}),
        ("CreateVolume", {"AvailabilityZone": identity.availability_zone, "Size": 1, "VolumeType": "gp2"}),
    ]
    honoured = False
    for operation, params in calls:
        if operation in ("CreateTags", "CreateVolume") and not honoured:
            notes.append(f"{operation}: permission not checked (DryRun not shown to be honoured here)")
            continue
        try:
            getattr(client, snake(operation))(DryRun=True, **params)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Unknown")
            if code == "DryRunOperation" or code in DENIED_CODES:
                honoured = True
                if code != "DryRunOperation":
                    missing.append(operation)
            elif code in REFUSED_PARAMETER_CODES:
                return [f"the endpoint does not take DryRun ({operation}: {code}); permissions not checked"]
            else:
                notes.append(f"{operation}: permission not checked ({code})")
            continue
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            return [f"permissions not checked: {endpoint} did not answer ({exc})"]
        return [*notes, f"the endpoint ignores DryRun ({operation} was answered); permissions not checked"]
    if honoured:
        notes += snapshot_notes(client)
    if missing:
        raise PermissionMissing(
            f"the cloud refuses {', '.join('ec2:' + m for m in missing)} to these credentials (a DryRun of "
            f"each was denied); grant {'it' if len(missing) == 1 else 'them'} — the minimal policy is in "
            "docs/cloud.md")
    return notes


#: A well-formed snapshot id no DryRun reaches.
PROBE_SNAPSHOT = "snap-0123456789abcdef0"


def snapshot_notes(client: Any) -> list[str]:
    """The calls of ``bsud snapshot`` and of a restore (``from-snapshot-set``) tried with DryRun: a note when the
    credentials may not make them (only those commands need them; the daemon runs without)."""
    calls = [("DescribeSnapshots", {"OwnerIds": ["self"], "MaxResults": 5}),
             ("CreateSnapshot", {"VolumeId": PROBE_VOLUME}),
             ("DeleteSnapshot", {"SnapshotId": PROBE_SNAPSHOT})]
    denied: list[str] = []
    for operation, params in calls:
        try:
            getattr(client, snake(operation))(DryRun=True, **params)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "Unknown") in DENIED_CODES:
                denied.append(operation)
        except (botocore.exceptions.BotoCoreError, OSError):
            return []
    if not denied:
        return []
    return [f"snapshots: the cloud refuses {', '.join('ec2:' + d for d in denied)} to these credentials: "
            "'bsud snapshot' and drives made from a snapshot set will fail; grant them if you take snapshots "
            "(docs/cloud.md)"]
