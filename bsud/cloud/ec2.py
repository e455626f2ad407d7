"""Volumes through an EC2-compatible API (Outscale FCU, AWS, any compatible endpoint) with boto3.

Retries: botocore's ``standard`` mode retries throttling (``RequestLimitExceeded``, 429) and
5xx with jittered exponential backoff; a token bucket (``before-send`` hook, so retries count
too) keeps all drives together under ``cloud.api-calls-per-second``. Old endpoints that
refuse ``TagSpecifications`` or ``ClientToken`` on CreateVolume get the plain call followed
at once by CreateTags, and the log says so.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from bsud.cloud.base import (
    Attachment,
    CloudProvider,
    Identity,
    Snapshot,
    Volume,
    VolumeOptions,
    choose_device_name,
)
from bsud.cloud.metadata import resolve_identity
from bsud.cloud.preflight import REFUSED_PARAMETER_CODES, check_permissions, snake
from bsud.config import MAX_VOLUMES_PER_VM, CloudSettings, Config, Provider
from bsud.errors import AttachmentLimitError, CloudError, VolumeStateError
from bsud.logs import get_logger
from bsud.naming import AVAILABLE, CREATING, DRIVE_TAG, SNAPSHOT_SET_TAG
from bsud.ratelimit import RateLimiter

log = get_logger("bsud.cloud.ec2")

#: The API refused the request for its rate.
_THROTTLED_CODES = frozenset(
    {"RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException",
     "RequestThrottled", "SlowDown"}
)
#: AttachVolume refused because the instance holds as many volumes as its type takes (AWS API reference,
#: AttachVolume: "the attachment request fails with the AttachmentLimitExceeded error"). Outscale's FCU, EC2-compatible,
#: has a fixed limit that bsud counts itself before asking (see attach_volume).
ATTACHMENT_LIMIT_CODES = frozenset({"AttachmentLimitExceeded"})
#: Worth trying again: throttled, or the service briefly unable to answer.
_THROTTLE_CODES = _THROTTLED_CODES | {"ServiceUnavailable", "InternalError", "Unavailable"}


def endpoint_for(settings: CloudSettings, region: str) -> str | None:
    if settings.endpoint:
        return settings.endpoint
    if settings.provider == Provider.OUTSCALE:
        return f"https://fcu.{region}.outscale.com"
    return None  # AWS: boto3 knows


def _to_volume(item: dict[str, Any]) -> Volume:
    tags = {t["Key"]: t.get("Value", "") for t in item.get("Tags", []) or []}
    attachments = tuple(
        Attachment(instance_id=a.get("InstanceId", ""), device=a.get("Device", ""), state=a.get("State", ""))
        for a in item.get("Attachments", []) or []
    )
    created = item.get("CreateTime")
    return Volume(
        id=item["VolumeId"],
        size_gib=int(item["Size"]),
        state=item.get("State", "unknown"),
        volume_type=item.get("VolumeType", ""),
        zone=item.get("AvailabilityZone", ""),
        tags=tags,
        attachments=attachments,
        iops=item.get("Iops"),
        create_time=created.timestamp() if hasattr(created, "timestamp") else None,
    )


def _to_snapshot(item: dict[str, Any]) -> Snapshot:
    started = item.get("StartTime")
    return Snapshot(
        id=item["SnapshotId"],
        volume_id=item.get("VolumeId", ""),
        size_gib=int(item.get("VolumeSize", 0)),
        state=item.get("State", "unknown"),
        tags={t["Key"]: t.get("Value", "") for t in item.get("Tags", []) or []},
        start_time=started.timestamp() if hasattr(started, "timestamp") else None,
        progress=item.get("Progress", ""),
    )


class Ec2Cloud(CloudProvider):
    name = "ec2"
    # AWS Nitro (NVMe), Xen/KVM virtio-blk, Outscale virtio-scsi, then the name Outscale's udev rules link.
    device_rules = ("nvme serial", "virtio serial", "scsi serial", "requested name")

    @classmethod
    def from_config(cls, config: Config) -> Ec2Cloud:
        secret = config.secret_key.get_secret_value() if config.secret_key else None
        return cls(config.cloud, config.access_key, secret)

    def __init__(
        self,
        settings: CloudSettings,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        identity: Identity | None = None,
        session: boto3.session.Session | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self._identity = identity or resolve_identity(settings)
        self.region = self._identity.region
        self.endpoint = endpoint_for(settings, self.region)
        self.limiter = RateLimiter(settings.api_calls_per_second, burst=max(1, int(settings.api_calls_per_second)))
        config = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
            connect_timeout=10,
            read_timeout=60,
            user_agent_extra="bsud",
        )
        self._session = session or boto3.session.Session()
        kwargs: dict[str, Any] = {"region_name": self.region}
        if self.endpoint:
            kwargs["endpoint_url"] = self.endpoint
        if access_key and secret_key:
            kwargs["aws_access_key_id"] = access_key
            kwargs["aws_secret_access_key"] = secret_key
        self._client_kwargs = kwargs
        self.client = self._session.client("ec2", config=config, **kwargs)
        # Every HTTP attempt (retries included) takes a token from the shared bucket.
        self.client.meta.events.register("before-send.ec2", self._rate_limit)
        self.client.meta.events.register("response-received.ec2", self._count_response)
        self._tag_on_create = True
        self._client_token = True
        self.calls = 0

    # -- plumbing ------------------------------------------------------------------------------

    def _rate_limit(self, **_: Any) -> None:
        self.calls += 1
        self.limiter.acquire()

    def _count_response(self, event_name: str = "", response_dict: dict[str, Any] | None = None,
                        parsed_response: dict[str, Any] | None = None, exception: Exception | None = None,
                        **_: Any) -> None:
        """Every attempt's answer, to ``on_request`` (botocore's ``response-received`` event)."""
        if self.on_request is None:
            return
        status = (response_dict or {}).get("status_code", 0)
        if exception is not None or response_dict is None:
            code = "Unreachable"
        elif status < 300:
            code = "OK"
        else:
            code = (parsed_response or {}).get("Error", {}).get("Code") or f"HTTP{status}"
        self.on_request(event_name.rsplit(".", 1)[-1], code, code in _THROTTLED_CODES or status == 429)

    def _call(self, operation: str, *, volume_id: str | None = None, **params: Any) -> dict[str, Any]:
        method = getattr(self.client, snake(operation))
        try:
            return method(**params)
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            code = err.get("Code", "Unknown")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            temporary = code in _THROTTLE_CODES or status in (429, 500, 502, 503, 504)
            message = f"{code}: {err.get('Message', '')}".rstrip(": ")
            if temporary:
                message += f" (still failing after {self.settings.max_attempts} attempts)"
            raise CloudError(operation, message, volume_id=volume_id, code=code, temporary=temporary,
                             throttled=code in _THROTTLED_CODES or status == 429) from None
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
                botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError) as exc:
            raise CloudError(operation, f"cannot reach {self.endpoint or 'the API'}: {exc}",
                             volume_id=volume_id, temporary=True) from None
        except botocore.exceptions.NoCredentialsError:
            raise CloudError(operation, "no credentials: set authentication in the config or "
                             "OSC_ACCESS_KEY/OSC_SECRET_KEY") from None

    # -- interface -------------------------------------------------------------------------------

    def identity(self) -> Identity:
        return self._identity

    def _describe(self, **params: Any) -> list[Volume]:
        volumes: list[Volume] = []
        token: str | None = None
        while True:
            page = self._call("DescribeVolumes", **params, **({"NextToken": token} if token else {}))
            volumes.extend(_to_volume(v) for v in page.get("Volumes", []))
            token = page.get("NextToken")
            if not token:
                return volumes

    def list_volumes(self) -> list[Volume]:
        return self._describe(Filters=[{"Name": "tag-key", "Values": [DRIVE_TAG]}])

    def get_volume(self, volume_id: str) -> Volume | None:
        try:
            found = self._describe(VolumeIds=[volume_id])
        except CloudError as exc:
            if exc.code in {"InvalidVolume.NotFound", "InvalidVolumeID.NotFound"}:
                return None
            raise
        return found[0] if found else None

    def create_volume(self, drive: str, size_gib: int, volume_type: str,
                      options: VolumeOptions = VolumeOptions()) -> Volume:
        params: dict[str, Any] = {
            "AvailabilityZone": self._identity.availability_zone,
            "Size": size_gib,
            "VolumeType": volume_type,
        }
        if options.iops is not None:
            params["Iops"] = options.iops
        if options.throughput is not None:
            params["Throughput"] = options.throughput
        if options.snapshot_id is not None:
            params["SnapshotId"] = options.snapshot_id
        if options.encrypted:
            params["Encrypted"] = True
            if options.kms_key_id:
                params["KmsKeyId"] = options.kms_key_id
        # bsud's own tag last: a user's tag never hides it (the config refuses its key anyway).
        tags = [*({"Key": k, "Value": v} for k, v in options.tags.items()), {"Key": DRIVE_TAG, "Value": drive}]
        token = str(uuid.uuid4())
        while True:
            attempt = dict(params)
            if self._tag_on_create:
                attempt["TagSpecifications"] = [{"ResourceType": "volume", "Tags": tags}]
            if self._client_token:
                attempt["ClientToken"] = token
            try:
                item = self._call("CreateVolume", **attempt)
                break
            except CloudError as exc:
                if exc.code not in REFUSED_PARAMETER_CODES:
                    raise
                text = str(exc).lower()
                if self._client_token and "clienttoken" in text:
                    self._client_token = False
                    log.warning("endpoint refuses ClientToken on CreateVolume; creating without it", error=str(exc))
                elif self._tag_on_create and ("tag" in text or exc.code == "UnknownParameter"):
                    self._tag_on_create = False
                    log.warning("endpoint refuses TagSpecifications on CreateVolume; "
                                "tagging with CreateTags right after creation", error=str(exc))
                elif self._client_token and exc.code == "UnknownParameter":
                    self._client_token = False
                    log.warning("CreateVolume refused a parameter; retrying without ClientToken", error=str(exc))
                else:
                    raise
        volume = _to_volume(item)
        if not self._tag_on_create or volume.drive != drive:
            self._call("CreateTags", volume_id=volume.id, Resources=[volume.id], Tags=tags)
            volume = Volume(**{**volume.__dict__, "tags": {**volume.tags, **options.tags, DRIVE_TAG: drive}})
        log.info("volume created", volume=volume.id, drive=drive, size_gib=size_gib, type=volume_type,
                 iops=options.iops, throughput=options.throughput, encrypted=options.encrypted)
        return volume

    # -- snapshots ---------------------------------------------------------------------------------

    def create_snapshot(self, volume_id: str, description: str, tags: Mapping[str, str]) -> Snapshot:
        """CreateSnapshot, tagged at creation (or by CreateTags right after, where the endpoint refuses
        TagSpecifications): the snapshot's content is the volume's at this call; it completes later (pending)."""
        listed = [{"Key": k, "Value": v} for k, v in tags.items()]
        params: dict[str, Any] = {"VolumeId": volume_id, "Description": description}
        if self._tag_on_create:
            params["TagSpecifications"] = [{"ResourceType": "snapshot", "Tags": listed}]
        try:
            item = self._call("CreateSnapshot", volume_id=volume_id, **params)
        except CloudError as exc:
            if not self._tag_on_create or exc.code not in REFUSED_PARAMETER_CODES:
                raise
            self._tag_on_create = False
            log.warning("endpoint refuses TagSpecifications on CreateSnapshot; tagging with CreateTags right after",
                        error=str(exc))
            params.pop("TagSpecifications")
            item = self._call("CreateSnapshot", volume_id=volume_id, **params)
        snapshot = _to_snapshot(item)
        if any(snapshot.tags.get(k) != v for k, v in tags.items()):
            self._call("CreateTags", volume_id=volume_id, Resources=[snapshot.id], Tags=listed)
            snapshot = Snapshot(**{**snapshot.__dict__, "tags": {**snapshot.tags, **tags}})
        log.info("snapshot started", snapshot=snapshot.id, volume=volume_id)
        return snapshot

    def list_snapshots(self) -> list[Snapshot]:
        found: list[Snapshot] = []
        token: str | None = None
        while True:
            page = self._call("DescribeSnapshots", OwnerIds=["self"],
                              Filters=[{"Name": "tag-key", "Values": [SNAPSHOT_SET_TAG]}],
                              **({"NextToken": token} if token else {}))
            found.extend(_to_snapshot(s) for s in page.get("Snapshots", []))
            token = page.get("NextToken")
            if not token:
                return found

    def set_snapshot_tag(self, snapshot_id: str, key: str, value: str) -> None:
        self._call("CreateTags", Resources=[snapshot_id], Tags=[{"Key": key, "Value": value}])

    def tag_snapshots(self, snapshot_ids: list[str], key: str, value: str) -> None:
        """CreateTags over the snapshots, up to 100 resources a call (one call for any set of bsud's)."""
        for i in range(0, len(snapshot_ids), 100):
            self._call("CreateTags", Resources=snapshot_ids[i:i + 100], Tags=[{"Key": key, "Value": value}])

    def delete_snapshot(self, snapshot_id: str) -> None:
        try:
            self._call("DeleteSnapshot", SnapshotId=snapshot_id)
        except CloudError as exc:
            if exc.code != "InvalidSnapshot.NotFound":
                raise
        log.info("snapshot deleted", snapshot=snapshot_id)

    def check_permissions(self) -> list[str]:
        """DryRun each call bsud makes (see :mod:`bsud.cloud.preflight`), one attempt each."""
        client = self._session.client("ec2", config=botocore.config.Config(
            retries={"mode": "standard", "max_attempts": 1}, connect_timeout=5, read_timeout=20,
            user_agent_extra="bsud"), **self._client_kwargs)
        client.meta.events.register("before-send.ec2", self._rate_limit)
        return check_permissions(client, self._identity, self.endpoint or "the API")

    def set_tag(self, volume_id: str, key: str, value: str) -> None:
        self._call("CreateTags", volume_id=volume_id, Resources=[volume_id], Tags=[{"Key": key, "Value": value}])

    def _attachments_of(self, instance_id: str) -> tuple[set[str], int]:
        """The device names taken on a VM, and how many volumes it holds (its root included)."""
        taken: set[str] = set()
        held: set[str] = set()
        page = self._call("DescribeInstances", InstanceIds=[instance_id])
        for reservation in page.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                if inst.get("RootDeviceName"):
                    taken.add(inst["RootDeviceName"])
                for mapping in inst.get("BlockDeviceMappings", []) or []:
                    taken.add(mapping.get("DeviceName", ""))
                    held.add((mapping.get("Ebs") or {}).get("VolumeId") or mapping.get("DeviceName", ""))
        for vol in self._describe(Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}]):
            taken.update(a.device for a in vol.attachments if a.instance_id == instance_id)
            held.add(vol.id)
        if instance_id == self._identity.instance_id and os.path.isdir("/dev"):
            # Names the kernel already shows here (e.g. Outscale's /dev/xvdX udev links) are taken too.
            taken.update(f"/dev/{n}" for n in os.listdir("/dev") if n.startswith(("xvd", "sd")))
        return taken, len(held - {""})

    def attach_volume(self, volume_id: str) -> str:
        return self.attach_volume_to(volume_id, self._identity.instance_id)

    def attach_volume_to(self, volume_id: str, instance_id: str) -> str:
        vol = self.get_volume(volume_id)
        if vol is None:
            raise VolumeStateError(volume_id, "deleted", " (it no longer exists)")
        mine = vol.attachment_to(instance_id)
        if mine is not None:
            return mine.device
        other = vol.attached_elsewhere(instance_id)
        if other is not None:
            raise VolumeStateError(volume_id, vol.state, f" (attached to {other.instance_id} as {other.device}; "
                                   "detach it there first)")
        if vol.state == CREATING:
            raise CloudError("AttachVolume", "still being created; will attach once available",
                             volume_id=volume_id, temporary=True)
        if vol.state != AVAILABLE:
            raise VolumeStateError(volume_id, vol.state)
        if vol.zone and vol.zone != self._identity.availability_zone:
            raise VolumeStateError(volume_id, vol.state, f" (in zone {vol.zone}, this VM is in "
                                   f"{self._identity.availability_zone})")
        taken, held = self._attachments_of(instance_id)
        if self.settings.provider == Provider.OUTSCALE and held >= MAX_VOLUMES_PER_VM:
            # Outscale's limit is the same for every VM: said by bsud, whatever code the endpoint would answer.
            raise AttachmentLimitError(volume_id, f"it holds {held} volumes, Outscale's limit is "
                                                  f"{MAX_VOLUMES_PER_VM} with its root")
        try:
            device = choose_device_name(taken)
            self._call("AttachVolume", volume_id=volume_id, VolumeId=volume_id, InstanceId=instance_id, Device=device)
        except AttachmentLimitError as exc:
            exc.volume_id = volume_id
            raise
        except CloudError as exc:
            if exc.code not in ATTACHMENT_LIMIT_CODES:
                raise
            raise AttachmentLimitError(volume_id, str(exc).removeprefix(f"AttachVolume on {volume_id}: "),
                                       code=exc.code) from None
        log.info("volume attach requested", volume=volume_id, device=device, instance=instance_id)
        return device

    def detach_volume(self, volume_id: str) -> None:
        me = self._identity.instance_id
        vol = self.get_volume(volume_id)
        if vol is None or vol.attachment_to(me) is None:
            return
        self._call("DetachVolume", volume_id=volume_id, VolumeId=volume_id, InstanceId=me)
        log.info("volume detach requested", volume=volume_id)

    def delete_volume(self, volume_id: str) -> None:
        vol = self.get_volume(volume_id)
        if vol is None or vol.state in ("deleting", "deleted"):
            return
        if vol.attachments and any(a.state != "detached" for a in vol.attachments):
            raise VolumeStateError(volume_id, vol.state, " (still attached; detach it first)")
        self._call("DeleteVolume", volume_id=volume_id, VolumeId=volume_id)
        log.info("volume delete requested", volume=volume_id)

