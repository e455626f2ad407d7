"""The configuration's schema (pydantic): sections, defaults, kebab-case keys, and the loaded :class:`Config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bsud.config.catalogue import DiskType, Layout, Provider, Target
from bsud.exports import Export, GaneshaSettings, NfsSettings
from bsud.config.ha import HaConfig
from bsud.config.mount_options import split as split_mount_options


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Section(BaseModel):
    model_config = ConfigDict(
        alias_generator=_kebab,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class Authentication(_Section):
    access_key: str = Field(min_length=1)
    secret_key: SecretStr


class CloudSettings(_Section):
    provider: Provider = Provider.OUTSCALE
    region: str | None = None
    endpoint: str | None = None
    instance_id: str | None = None
    availability_zone: str | None = None
    metadata_url: str = "http://169.254.169.254"
    state_dir: str = "/var/lib/bsud/local"
    api_calls_per_second: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=8, ge=1, le=50)
    #: Defaults for every drive's new volumes (a drive's own value wins; tags are merged, the drive's last).
    tags: dict[str, str] = Field(default_factory=dict)
    encrypted: bool = False
    kms_key_id: str | None = None


class DaemonSettings(_Section):
    status_file: str = "/run/bsud/status.json"
    #: How often a mounted drive's live space is sampled (sysfs file reads: no process, no API call).
    usage_interval_seconds: float = Field(default=0.25, gt=0, le=60)
    #: The shared cloud listing is kept this long (± 20 %) when nothing happens: the host tells what changes under a
    #: drive (block device events), bsud's own changes are read back at once.
    cloud_refresh_seconds: float = Field(default=1200.0, gt=0)
    full_check_seconds: float = Field(default=60.0, gt=0)
    retry_seconds: float = Field(default=10.0, gt=0)
    #: Scale up when the drive would be full, at its present write rate, sooner than this many grow times.
    grow_safety_factor: float = Field(default=3.0, ge=1, le=100)
    #: The highest write rate over this long holds a scale-down back (no volume leaves a drive that would be full
    #: within the hour at that rate): how long after a burst a drive may shrink.
    rate_peak_seconds: float = Field(default=60.0, gt=0, le=3600)
    #: What a grow takes until this drive has grown once (then learned); default: the provider's.
    grow_seconds: float | None = Field(default=None, gt=0, le=3600)
    #: How long a volume may take to be created, attached, detached or deleted before the step fails (retried).
    volume_wait_seconds: float = Field(default=300.0, gt=0, le=3600)
    #: How long an attached volume's block device may take to appear before the step fails (retried).
    device_wait_seconds: float = Field(default=120.0, gt=0, le=3600)
    #: At start, systemd hears READY=1 once every online drive is mounted, or after this long (STATUS then names
    #: the drives that are not). Short: boot must not wait on the cloud; a unit that needs a drive mounted waits
    #: with bsud-wait-online@<drive>.service (``bsud wait-online``).
    ready_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    #: ``host:port`` to serve Prometheus metrics on (``/metrics``); off when unset.
    metrics_listen: str | None = None
    #: A ``.prom`` file the same metrics are written to, for node_exporter's textfile collector; off when unset.
    metrics_textfile: str | None = None
    #: A command (argument list, no shell) run once per event (scale, block, recovery), the facts in ``BSUD_*``
    #: environment variables; off when unset.
    on_event: tuple[str, ...] | None = None
    on_event_timeout_seconds: float = Field(default=30.0, gt=0, le=600)


class DriveConfig(_Section):
    name: str
    target: Target
    mount_path: str
    disk_type: DiskType = DiskType.GP2
    disk_iops_per_gib: int | None = None
    #: A fixed IOPS figure for every new volume (gp3, io1, io2), instead of disk-iops-per-gib.
    disk_iops: int | None = None
    #: MiB/s for every new gp3 volume.
    disk_throughput: int | None = None
    #: Extra tags on every volume bsud creates for the drive (cost allocation), beside bsud's own.
    tags: dict[str, str] | None = None
    encrypted: bool | None = None
    kms_key_id: str | None = None
    max_total_size_gib: int | None = None
    initial_size_gib: int = 10
    max_bsu_count: int = 10
    max_used_space_perc: int = 85
    min_used_space_perc: int = 40
    disk_scale_factor_perc: int = 20
    layout: Layout = Layout.LVM
    #: How the drive is shared while it is online and mounted (NFS, SMB, iSCSI, NVMe-oF).
    exports: tuple[Export, ...] = ()
    #: Its exports served by a highly available gateway (drbd-reactor's promoter; bsud writes its file).
    ha: HaConfig | None = None
    #: btrfs and VFS mount options (``"compress=zstd:3,noatime"`` or a list): at every mount, and by remount on a
    #: mounted drive (bsud.config.mount_options).
    mount_options: tuple[str, ...] = ()
    #: Made from this snapshot set when it has no volume yet (``bsud snapshots`` lists the sets).
    from_snapshot_set: str | None = None

    @field_validator("mount_options", mode="before")
    @classmethod
    def _split_mount_options(cls, value: object) -> object:
        if isinstance(value, str) or isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return split_mount_options(value)  # type: ignore[arg-type]
        return value

    def exports_by(self, exporter: str) -> list[Export]:
        """The drive's exports one exporter serves (``nfs``, ``nfs-ganesha``, ``smb``, ``iscsi``, ``nvmeof``)."""
        return [e for e in self.exports if e.exporter == exporter]


class _ConfigFile(_Section):
    authentication: Authentication | None = None
    cloud: CloudSettings = CloudSettings()
    daemon: DaemonSettings = DaemonSettings()
    nfs: NfsSettings = NfsSettings()
    drives: list[DriveConfig]


class EnvSettings(BaseSettings):
    """What bsud reads from its environment (credentials, log level)."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    osc_access_key: str | None = None
    osc_secret_key: SecretStr | None = None
    bsud_log: str | None = None


@dataclass(frozen=True)
class Config:
    """A loaded, validated configuration."""

    path: str
    drives: tuple[DriveConfig, ...]
    cloud: CloudSettings
    daemon: DaemonSettings
    access_key: str | None
    secret_key: SecretStr | None
    credentials_from: str
    warnings: tuple[str, ...] = field(default=())
    nfs: NfsSettings = field(default_factory=NfsSettings)

    def drive(self, name: str) -> DriveConfig:
        for drive in self.drives:
            if drive.name == name:
                return drive
        raise KeyError(name)

    def secrets(self) -> list[str]:
        """Values that must never appear in a log: the API secret key, the exports' CHAP passwords."""
        chap = [e.chap.password.get_secret_value() for d in self.drives for e in d.exports
                if getattr(e, "chap", None) is not None]
        return ([self.secret_key.get_secret_value()] if self.secret_key else []) + chap

    def effective(self) -> dict[str, Any]:
        """The config with every default filled in and secrets masked (for check-config)."""
        auth: dict[str, Any] = {"from": self.credentials_from}
        if self.access_key:
            auth["access-key"] = mask(self.access_key, keep=4)
        if self.secret_key:
            auth["secret-key"] = mask(self.secret_key.get_secret_value())
        return {
            "config": self.path,
            "authentication": auth,
            "cloud": self.cloud.model_dump(mode="json", by_alias=True),
            "daemon": self.daemon.model_dump(mode="json", by_alias=True),
            "nfs": self.nfs.model_dump(mode="json", by_alias=True),
            "drives": [d.model_dump(mode="json", by_alias=True) for d in self.drives],
        }


def mask(value: str, keep: int = 0) -> str:
    """``AKIAXXXX********`` style masking; never shows more than ``keep`` characters."""
    return value[:keep] + "*" * 8 if keep and len(value) > keep * 2 else "*" * 8
