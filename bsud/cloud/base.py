"""What the reconcile engine knows of a cloud: volumes, this VM, and a few verbs.

Providers (EC2 API through boto3, local loop-file volumes) implement
:class:`CloudProvider`; the engine cannot tell them apart. Data types here are plain
frozen dataclasses, and the device-name choice is a pure function.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bsud.errors import AttachmentLimitError, CloudError, CloudTimeout, VolumeStateError
from bsud.logs import get_logger
from bsud.naming import AVAILABLE, DELETED, DRIVE_TAG, ERROR, device_suffix

if TYPE_CHECKING:
    from bsud.config import Config, DriveConfig, Provider

log = get_logger("bsud.cloud")


@dataclass(frozen=True)
class Identity:
    """This VM as the cloud knows it."""

    instance_id: str
    availability_zone: str
    region: str


@dataclass(frozen=True)
class Attachment:
    instance_id: str
    device: str
    state: str  # attaching | attached | detaching | detached


@dataclass(frozen=True)
class VolumeOptions:
    """What a new volume is made with beside its size and type (from the drive's config)."""

    iops: int | None = None
    throughput: int | None = None                # MiB/s (gp3)
    encrypted: bool = False
    kms_key_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)  # the user's, beside bsud's own
    #: Made from this snapshot (its content, at least its size): a restore (``from-snapshot-set``).
    snapshot_id: str | None = None

    @classmethod
    def for_drive(cls, spec: DriveConfig, provider: Provider, size_gib: int, tags: Mapping[str, str],
                  snapshot_id: str | None = None) -> VolumeOptions:
        """A volume of ``size_gib`` for the drive ``spec`` (a new one, or one made from a snapshot): its IOPS (per
        GiB where the drive asks, within the type's limits), throughput, encryption, the user's tags and ``tags``."""
        from bsud.config import provisioned_iops, volume_limits

        limits = volume_limits(provider, spec.disk_type)
        iops = spec.disk_iops
        if spec.disk_iops_per_gib is not None and limits is not None and limits.max_iops_per_gib:
            iops = provisioned_iops(size_gib, spec.disk_iops_per_gib, limits)
        return cls(iops=iops, throughput=spec.disk_throughput, encrypted=bool(spec.encrypted),
                   kms_key_id=spec.kms_key_id, tags={**(spec.tags or {}), **tags}, snapshot_id=snapshot_id)


@dataclass(frozen=True)
class Volume:
    id: str
    size_gib: int
    state: str
    volume_type: str
    zone: str
    tags: Mapping[str, str] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()
    iops: int | None = None
    create_time: float | None = None
    #: Local provider only: the sparse file behind the volume.
    backing_file: str | None = None

    @property
    def drive(self) -> str | None:
        return self.tags.get(DRIVE_TAG)

    def attachment_to(self, instance_id: str) -> Attachment | None:
        for att in self.attachments:
            if att.instance_id == instance_id and att.state != "detached":
                return att
        return None

    def attached_elsewhere(self, instance_id: str) -> Attachment | None:
        for att in self.attachments:
            if att.instance_id != instance_id and att.state != "detached":
                return att
        return None


@dataclass(frozen=True)
class Snapshot:
    """A point-in-time copy of a volume, fixed at the call that made it."""

    id: str
    volume_id: str
    size_gib: int
    state: str                                   # pending | completed | error
    tags: Mapping[str, str] = field(default_factory=dict)
    start_time: float | None = None
    progress: str = ""
    #: Local provider only: the copy of the volume's file.
    backing_file: str | None = None


def volumes_by_drive(volumes: Iterable[Volume]) -> dict[str, list[Volume]]:
    """Group tagged volumes per drive name (volumes without the tag are left out)."""
    grouped: dict[str, list[Volume]] = {}
    for vol in volumes:
        if vol.drive:
            grouped.setdefault(vol.drive, []).append(vol)
    for vols in grouped.values():
        vols.sort(key=lambda v: (v.create_time or 0.0, v.id))
    return grouped


# --- device names ---------------------------------------------------------------------------

def candidate_device_names() -> list[str]:
    """Valid attach names in preference order: /dev/xvdb … /dev/xvdz, then /dev/xvdba … /dev/xvdzz."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    singles = [f"/dev/xvd{c}" for c in letters[1:]]
    doubles = [f"/dev/xvd{a}{b}" for a in letters[1:] for b in letters]
    return singles + doubles


def choose_device_name(taken: Iterable[str]) -> str:
    """First valid attach name whose suffix nobody uses (``/dev/sdc`` and ``/dev/xvdc`` clash). Pure."""
    used = {s for s in (device_suffix(n) for n in taken) if s}
    for name in candidate_device_names():
        if device_suffix(name) not in used:
            return name
    raise AttachmentLimitError(None, "every device name bsud gives, /dev/xvdb to /dev/xvdzz, is taken")


# --- the provider interface -------------------------------------------------------------------


class CloudProvider(ABC):
    """A cloud's block volumes, seen from one VM."""

    name = "abstract"
    poll_interval = 2.0
    #: Commands this provider runs on the host (checked by the daemon at start).
    tools: tuple[str, ...] = ()
    #: How the host tells this provider's volumes apart: names of the identity rules in
    #: ``bsud.host.devices.RULES``, tried in order (a serial before the requested device name).
    device_rules: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> CloudProvider:
        """The provider for a loaded config (its ``cloud`` section and credentials)."""
        raise NotImplementedError(f"{cls.__name__} is not made from a config")

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        #: Told of every API request (each attempt): its action, result code ("OK", the error code, or
        #: "Unreachable") and whether it was throttled — the metrics' cloud counters.
        self.on_request: Callable[[str, str, bool], None] | None = None

    def check_permissions(self) -> list[str]:
        """At start: whether these credentials may make every call bsud needs. Raises a :class:`BsudError`
        naming what is missing; returns notes on what could not be checked. Nothing to check, by default."""
        return []

    @abstractmethod
    def identity(self) -> Identity:
        """This VM's instance id, zone and region."""

    @abstractmethod
    def list_volumes(self) -> list[Volume]:
        """Every volume carrying the drive tag, all drives at once (one API call per page)."""

    @abstractmethod
    def get_volume(self, volume_id: str) -> Volume | None:
        """One volume, or None when it no longer exists."""

    @abstractmethod
    def create_volume(self, drive: str, size_gib: int, volume_type: str,
                      options: VolumeOptions = VolumeOptions()) -> Volume:
        """Create a volume in this VM's zone, tagged for ``drive`` from its first moment."""

    @abstractmethod
    def set_tag(self, volume_id: str, key: str, value: str) -> None:
        """Set one tag on a volume (bsud's own bookkeeping, e.g. a removal in progress)."""

    @abstractmethod
    def attach_volume(self, volume_id: str) -> str:
        """Attach to this VM under a free device name; return the name requested."""

    def attach_volume_to(self, volume_id: str, instance_id: str) -> str:
        """Attach to another VM of this zone (a highly available drive's Primary attaching the volume it made for
        its peer's drive); return the name requested."""
        raise VolumeStateError(volume_id, "available", f" (the {type(self).__name__} provider cannot attach a volume "
                               f"to another VM, {instance_id})")

    # -- snapshots (bsud snapshot, from-snapshot-set) ----------------------------------------

    def create_snapshot(self, volume_id: str, description: str, tags: Mapping[str, str]) -> Snapshot:
        """Start a snapshot of a volume, tagged from its first moment; its content is the volume's at the call."""
        raise CloudError("CreateSnapshot", f"the {type(self).__name__} provider makes no snapshots",
                         volume_id=volume_id)

    def list_snapshots(self) -> list[Snapshot]:
        """Every snapshot of a set (carrying ``SNAPSHOT_SET_TAG``), all drives at once."""
        return []

    def set_snapshot_tag(self, snapshot_id: str, key: str, value: str) -> None:
        raise CloudError("CreateTags", f"the {type(self).__name__} provider makes no snapshots")

    def tag_snapshots(self, snapshot_ids: list[str], key: str, value: str) -> None:
        """One tag on several snapshots (a provider that can: in one call)."""
        for snapshot_id in snapshot_ids:
            self.set_snapshot_tag(snapshot_id, key, value)

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete a snapshot (gone already: nothing to do)."""
        raise CloudError("DeleteSnapshot", f"the {type(self).__name__} provider makes no snapshots")

    @abstractmethod
    def detach_volume(self, volume_id: str) -> None:
        """Detach from this VM (only from this VM)."""

    @abstractmethod
    def delete_volume(self, volume_id: str) -> None:
        """Delete an available (detached) volume."""

    # -- waiting ---------------------------------------------------------------------------

    def wait_for(
        self,
        volume_id: str,
        done: Callable[[Volume | None], bool],
        wanted: Sequence[str],
        timeout: float,
        *,
        gone_ok: bool = False,
    ) -> Volume | None:
        """Poll until ``done(volume)``; raise CloudTimeout after ``timeout`` seconds.

        A volume in ``error`` (unless wanted) or gone (unless ``gone_ok``) fails at once
        instead of being waited on forever.
        """
        deadline = time.monotonic() + timeout
        last = "unknown"
        while True:
            vol = self.get_volume(volume_id)
            if done(vol):
                return vol
            if vol is None:
                if not gone_ok:
                    raise VolumeStateError(volume_id, DELETED, " (it no longer exists)")
                last = DELETED
            else:
                last = vol.state
                if vol.state == ERROR and ERROR not in wanted:
                    raise VolumeStateError(volume_id, ERROR)
            if time.monotonic() >= deadline:
                raise CloudTimeout(volume_id, wanted, last, timeout)
            if self.stop_event.wait(self.poll_interval):
                raise CloudError("wait", "interrupted by shutdown", volume_id=volume_id, temporary=True)

    def wait_available(self, volume_id: str, timeout: float = 300.0) -> Volume:
        vol = self.wait_for(volume_id, lambda v: v is not None and v.state == AVAILABLE, [AVAILABLE], timeout)
        assert vol is not None
        return vol

    def wait_attached(self, volume_id: str, timeout: float = 300.0, instance_id: str | None = None) -> Volume:
        """Until the volume is attached to this VM (or to ``instance_id``)."""
        me = instance_id or self.identity().instance_id

        def done(v: Volume | None) -> bool:
            if v is None:
                return False
            other = v.attached_elsewhere(me)
            if other is not None:
                raise VolumeStateError(volume_id, v.state, f" (attached to {other.instance_id})")
            att = v.attachment_to(me)
            return att is not None and att.state == "attached"

        vol = self.wait_for(volume_id, done, ["attached"], timeout)
        assert vol is not None
        return vol

    def wait_detached(self, volume_id: str, timeout: float = 300.0) -> Volume | None:
        me = self.identity().instance_id
        return self.wait_for(
            volume_id,
            lambda v: v is None or v.attachment_to(me) is None,
            ["detached"],
            timeout,
            gone_ok=True,
        )

    def wait_deleted(self, volume_id: str, timeout: float = 300.0) -> None:
        self.wait_for(volume_id, lambda v: v is None or v.state == DELETED, [DELETED], timeout, gone_ok=True)
