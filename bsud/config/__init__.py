"""The configuration file: its schema, defaults, validation and one-line errors.

Accepts the original (Rust) bsud's file unchanged — kebab-case keys, same defaults —
plus an optional ``cloud`` section and a per-drive ``layout``. Everything is checked
at load time; each problem becomes one :class:`ConfigError` naming the file, the
drive and the field. Nothing here does I/O besides reading the file and its mode.

The package: ``catalogue`` (what clouds offer, importable without pydantic), ``schema`` (the pydantic models and
:class:`Config`), ``rules`` (what the
schema cannot say: names, paths, limits), ``load`` (error translation, loading). Everything is re-exported here.
"""

from __future__ import annotations

from bsud.config.catalogue import (
    MAX_VOLUMES_PER_VM,
    OUTSCALE_REGIONS,
    PROVISIONED_IOPS_TYPES,
    DiskType,
    Layout,
    Provider,
    Target,
    VolumeLimits,
    provisioned_iops,
    volume_limits,
)
from bsud.config.load import DEFAULT_CONFIG_PATH, InvalidConfig, load_config, parse_config
from bsud.config.rules import check_drive_name, check_mount_path
from bsud.config.schema import (
    Authentication,
    CloudSettings,
    Config,
    DaemonSettings,
    DriveConfig,
    EnvSettings,
    GaneshaSettings,
    NfsSettings,
    mask,
)

__all__ = [
    "DEFAULT_CONFIG_PATH", "MAX_VOLUMES_PER_VM", "OUTSCALE_REGIONS", "PROVISIONED_IOPS_TYPES", "Authentication",
    "CloudSettings", "Config", "DaemonSettings", "DiskType", "DriveConfig", "EnvSettings", "GaneshaSettings",
    "InvalidConfig", "Layout", "NfsSettings", "Provider", "Target", "VolumeLimits", "check_drive_name", "check_mount_path", "load_config", "mask",
    "parse_config", "provisioned_iops", "volume_limits",
]
