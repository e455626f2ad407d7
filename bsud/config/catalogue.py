"""What the clouds offer: providers, disk types, volume size and IOPS limits, regions. No pydantic, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bsud.naming import DEFAULT_MAX_VOLUME_GIB

OUTSCALE_REGIONS = ("eu-west-2", "us-east-2", "us-west-1", "cloudgouv-eu-west-1", "ap-northeast-1")
#: Volumes a VM can hold on Outscale, its root volume included (docs.outscale.com/en/userguide/About-Volumes.html:
#: "You can attach up to 40 volumes (including the root device) to a same VM").
MAX_VOLUMES_PER_VM = 40
#: EBS volumes the largest AWS instance types take, the root volume included (AWS EC2 User Guide, "Amazon EBS volume
#: limits for Amazon EC2 instances": the dedicated limit of the 48xlarge sizes). Most Nitro types take 28 attachments
#: shared with network interfaces and NVMe instance store (so 27 volumes at best); Xen types, 40 on a best-effort
#: basis. Beyond its type's own limit, AttachVolume fails with ``AttachmentLimitExceeded``.
MAX_VOLUMES_PER_AWS_INSTANCE = 128
#: The attach names bsud gives: /dev/xvdb … /dev/xvdz, then /dev/xvdba … /dev/xvdzz (``bsud.cloud.base``). The root
#: volume (/dev/sda1, /dev/xvda) is not among them.
DEVICE_NAMES = 25 + 25 * 26


class Target(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    DELETE = "delete"


class DiskType(StrEnum):
    STANDARD = "standard"
    GP2 = "gp2"
    GP3 = "gp3"
    IO1 = "io1"
    IO2 = "io2"
    ST1 = "st1"
    SC1 = "sc1"


class Layout(StrEnum):
    LVM = "lvm"
    BTRFS = "btrfs"


class Provider(StrEnum):
    OUTSCALE = "outscale"
    AWS = "aws"
    EC2 = "ec2"
    LOCAL = "local"


@dataclass(frozen=True)
class VolumeLimits:
    """What one cloud accepts for one volume type (sizes in GiB)."""

    min_size: int
    max_size: int
    max_iops: int | None = None
    max_iops_per_gib: int | None = None
    min_iops: int = 100
    #: gp3: IOPS and throughput are set apart from the size; this many IOPS whatever the size.
    baseline_iops: int | None = None
    min_throughput: int | None = None            # MiB/s; None: the type has no throughput setting
    max_throughput: int | None = None
    max_throughput_per_iops: float | None = None


_OUTSCALE_LIMITS = {
    DiskType.STANDARD: VolumeLimits(1, DEFAULT_MAX_VOLUME_GIB),
    DiskType.GP2: VolumeLimits(1, DEFAULT_MAX_VOLUME_GIB),
    DiskType.IO1: VolumeLimits(4, DEFAULT_MAX_VOLUME_GIB, max_iops=13000, max_iops_per_gib=300),
}
_AWS_LIMITS = {
    DiskType.STANDARD: VolumeLimits(1, 1024),
    DiskType.GP2: VolumeLimits(1, 16384),
    DiskType.GP3: VolumeLimits(1, 16384, max_iops=80000, max_iops_per_gib=500, min_iops=3000, baseline_iops=3000,
                               min_throughput=125, max_throughput=2000, max_throughput_per_iops=0.25),
    DiskType.IO1: VolumeLimits(4, 16384, max_iops=64000, max_iops_per_gib=50),
    DiskType.IO2: VolumeLimits(4, 16384, max_iops=64000, max_iops_per_gib=500),
    DiskType.ST1: VolumeLimits(125, 16384),
    DiskType.SC1: VolumeLimits(125, 16384),
}
# A generic EC2-compatible endpoint and the local provider: the union, Outscale's caps for io1.
_GENERIC_LIMITS = {**_AWS_LIMITS, **_OUTSCALE_LIMITS}
LIMITS = {
    Provider.OUTSCALE: _OUTSCALE_LIMITS,
    Provider.AWS: _AWS_LIMITS,
    Provider.EC2: _GENERIC_LIMITS,
    Provider.LOCAL: _GENERIC_LIMITS,
}
PROVISIONED_IOPS_TYPES = frozenset({DiskType.IO1, DiskType.IO2})
#: Types whose IOPS can be set (a fixed figure: ``disk-iops``).
IOPS_TYPES = PROVISIONED_IOPS_TYPES | {DiskType.GP3}
#: Providers whose volumes can be encrypted at creation (Outscale FCU has no such option; the local provider's
#: volumes are plain files).
ENCRYPTION_PROVIDERS = frozenset({Provider.AWS, Provider.EC2})
#: Tag keys bsud cannot let a user set: its own namespace, and what the clouds reserve.
RESERVED_TAG_PREFIXES = ("osc.bsud.", "aws:")
#: Tags one volume may carry (AWS), bsud's own included; a key's and a value's longest length.
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE = 50, 127, 255
#: Tags bsud sets itself (the drive's name, the bookkeeping of a removal).
OWN_TAGS = 2


@dataclass(frozen=True)
class AttachLimit:
    """The most volumes a drive can ever have on a provider's VM (``max-bsu-count``'s ceiling), and why."""

    volumes: int
    why: str


#: Per provider, what no VM of that cloud can exceed: the cloud's documented maximum less the root volume, or, where
#: the cloud documents none (a generic EC2-compatible endpoint, the local provider), the device names bsud can give.
ATTACH_LIMITS = {
    Provider.OUTSCALE: AttachLimit(MAX_VOLUMES_PER_VM - 1,
                                   f"an Outscale VM holds {MAX_VOLUMES_PER_VM} volumes, its root included"),
    Provider.AWS: AttachLimit(MAX_VOLUMES_PER_AWS_INSTANCE - 1,
                              f"the largest AWS instance types take {MAX_VOLUMES_PER_AWS_INSTANCE} EBS volumes, the "
                              "root included; most take 27 or fewer"),
    Provider.EC2: AttachLimit(DEVICE_NAMES, f"bsud names at most {DEVICE_NAMES} devices, /dev/xvdb to /dev/xvdzz"),
    Provider.LOCAL: AttachLimit(DEVICE_NAMES, f"bsud names at most {DEVICE_NAMES} devices, /dev/xvdb to /dev/xvdzz"),
}


def volume_limits(provider: Provider, disk_type: DiskType) -> VolumeLimits | None:
    """Limits of ``disk_type`` on ``provider``; None when that cloud has no such type."""
    return LIMITS[provider].get(disk_type)


def provisioned_iops(size_gib: int, iops_per_gib: int, limits: VolumeLimits) -> int:
    """IOPS to request for a provisioned volume: clamp(size × per-GiB, min, min(cap, ratio × size)).

    The original bsud used max() where min() was meant and always asked for ≥ 13000.
    """
    ceiling = limits.max_iops or size_gib * iops_per_gib
    if limits.max_iops_per_gib:
        ceiling = min(ceiling, limits.max_iops_per_gib * size_gib)
    return max(limits.min_iops, min(size_gib * iops_per_gib, ceiling))
