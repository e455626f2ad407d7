"""The rules a config must follow beyond its schema: names, paths, the cloud's limits, the daemon's options.

Pure functions of the parsed file: each problem is one :class:`ConfigError` naming the drive and field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from bsud.config.catalogue import (
    ATTACH_LIMITS,
    ENCRYPTION_PROVIDERS,
    IOPS_TYPES,
    LIMITS,
    MAX_TAG_KEY,
    MAX_TAG_VALUE,
    MAX_TAGS,
    OUTSCALE_REGIONS,
    OWN_TAGS,
    PROVISIONED_IOPS_TYPES,
    RESERVED_TAG_PREFIXES,
    Provider,
    Target,
    VolumeLimits,
    volume_limits,
)
from bsud.exports import check_export, export_identities, export_name
from bsud.config.ha import check_ha
from bsud.config.mount_options import problems as mount_option_problems
from bsud.config.schema import CloudSettings, DaemonSettings, DriveConfig, _ConfigFile
from bsud.errors import ConfigError

# --- validation rules --------------------------------------------------------------------

# VG names: LVM allows [a-zA-Z0-9+_.-], not starting with '-'. We also keep the name usable as
# a tag value, a btrfs label and a path component, and out of /dev's own namespace.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+_.-]{0,62}$")
_RESERVED_NAMES = frozenset(
    {
        "block", "bsg", "bus", "char", "console", "core", "cpu", "disk", "dma_heap", "dri", "fd",
        "full", "hugepages", "input", "kmsg", "log", "lvm", "mapper", "mem", "mqueue", "net",
        "null", "port", "ptmx", "pts", "random", "rtc", "shm", "snd", "stderr", "stdin", "stdout",
        "tty", "urandom", "vfio", "zero",
    }
)
#: Kernel block and tty device names a VM can have (a VG of that name would clash under /dev), and what LVM
#: reserves. Only real clashes: ``sdata``, ``mdata``, ``vdisk`` or ``ttyrec`` are fine (the original accepts them).
_RESERVED_PATTERNS = re.compile(
    r"(?:sd|vd|xvd)[a-z]{1,2}\d*|hd[a-z]\d*|nvme\d+(?:n\d+(?:p\d+)?)?|nvme-fabrics|loop\d+|loop-control"
    r"|md\d+(?:p\d+)?|dm-\d+|sr\d+|sg\d+|ram\d+|zram\d+|nbd\d+(?:p\d+)?|rbd\d+|vcsa?\d*|vcsu\d*"
    r"|tty(?:s|usb|acm|ama|printk)?\d*|snapshot|pvmove",
)

# Mount paths that are (or hold) the operating system.
_SYSTEM_DIRS = frozenset(
    {
        "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media",
        "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr",
        "/var", "/var/lib", "/var/log", "/var/cache", "/var/tmp", "/var/spool", "/var/lib/bsud",
    }
)
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                 "/run", "/sbin", "/sys", "/usr")


def check_drive_name(name: str) -> str | None:
    """Why ``name`` cannot be a drive name (VG name, tag value, label), or None when it can."""
    if not _NAME_RE.match(name):
        return (
            f"{name!r} is not a usable drive name: use 1 to 63 letters, digits or + _ . -, "
            "starting with a letter or digit"
        )
    lowered = name.lower()
    if lowered in _RESERVED_NAMES or _RESERVED_PATTERNS.fullmatch(lowered):
        return f"{name!r} is reserved (it would clash with a name under /dev or in LVM); choose another name"
    if name in {".", ".."}:
        return f"{name!r} is not a usable drive name"
    return None


def check_mount_path(path: str) -> str | None:
    """Why ``path`` cannot be a drive's mount path, or None when it can."""
    if not path.startswith("/"):
        return f"{path!r} must be an absolute path (starting with /)"
    if any(ch.isspace() or ord(ch) < 32 for ch in path):
        return f"{path!r} must not contain spaces or control characters"
    parts = path.split("/")[1:]
    if any(p in {".", ".."} for p in parts):
        return f"{path!r} must not contain '.' or '..' components"
    normal = str(PurePosixPath(path))
    if normal == "/":
        return "the mount path must not be '/'"
    if normal in _SYSTEM_DIRS or any(normal == t or normal.startswith(t + "/") for t in _SYSTEM_TREES):
        return f"{normal!r} is a system directory; mount the drive elsewhere (e.g. /mnt/<drive> or /data)"
    return None


def parse_listen(value: str) -> tuple[str, int] | None:
    """``host:port``, ``[v6]:port`` or ``:port`` (all addresses) → (host, port); None when it is not that."""
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9_.-]*)):(\d{1,5})", value)
    if not m or not 1 <= int(m.group(3)) <= 65535:
        return None
    return (m.group(1) or m.group(2) or "0.0.0.0"), int(m.group(3))


def check_daemon(daemon: DaemonSettings) -> list[tuple[str, str]]:
    """(field, why) for each problem of the daemon section."""
    problems = []
    if daemon.metrics_listen is not None and parse_listen(daemon.metrics_listen) is None:
        problems.append(("metrics-listen", f"{daemon.metrics_listen!r} is not host:port (e.g. 127.0.0.1:9711, "
                                           "[::1]:9711, or :9711 for every address; port 1 to 65535)"))
    textfile = daemon.metrics_textfile
    if textfile is not None and (not textfile.startswith("/") or not textfile.endswith(".prom")):
        problems.append(("metrics-textfile", f"{textfile!r} must be an absolute path ending in .prom (what "
                                             "node_exporter's textfile collector reads)"))
    if daemon.on_event is not None:
        if not daemon.on_event or not daemon.on_event[0]:
            problems.append(("on-event", "give the command as a list: [\"/path/to/program\", \"arg\", ...]"))
        elif not daemon.on_event[0].startswith("/"):
            problems.append(("on-event", f"{daemon.on_event[0]!r}: give the program's absolute path (it runs "
                                         "without a shell)"))
    return problems


def _grow_then_shrink(d: DriveConfig, name: str, path: str) -> list[str]:
    """A warning for thresholds and a factor whose classic grow lands under min-used-space-perc with the new volume
    alone holding the data under the middle: the right size then moves the data onto it after every grow."""
    grown = 1 + d.disk_scale_factor_perc / 100        # the new volume, the first one being 1
    landed = d.max_used_space_perc / (1 + grown)      # used % right after the grow
    alone = d.max_used_space_perc / grown             # used % on the new volume alone
    middle = (d.min_used_space_perc + d.max_used_space_perc) / 2
    if landed >= d.min_used_space_perc or alone > middle:
        return []
    return [f"{path}: drive {name!r}: a grow at max-used-space-perc ({d.max_used_space_perc}) with "
            f"disk-scale-factor-perc {d.disk_scale_factor_perc} lands at {landed:.1f}% used, under "
            f"min-used-space-perc ({d.min_used_space_perc}): after each grow the smaller volume's data is moved onto "
            "the new one to bring the drive to its right size; lower min-used-space-perc or the factor to keep the "
            "grows (docs/operations.md, \"The right size after a burst\")"]


def check_semantics(cfg: _ConfigFile, path: str) -> tuple[list[ConfigError], list[str]]:
    problems: list[ConfigError] = []
    warnings: list[str] = []

    def problem(drive: str | None, key: str, message: str) -> None:
        problems.append(ConfigError(message, path=path, drive=drive, field=key))

    cloud = cfg.cloud
    if cloud.provider == Provider.OUTSCALE and not cloud.endpoint and cloud.region:
        if cloud.region not in OUTSCALE_REGIONS:
            problem(None, "cloud.region", f"unknown Outscale region {cloud.region!r}; "
                    f"use one of {', '.join(OUTSCALE_REGIONS)} or set cloud.endpoint")
    if cloud.provider == Provider.EC2 and not cloud.endpoint:
        problem(None, "cloud.endpoint", "provider 'ec2' needs the endpoint URL of the EC2-compatible API")
    if cloud.endpoint and not re.match(r"^https?://[^\s/]+", cloud.endpoint):
        problem(None, "cloud.endpoint", f"{cloud.endpoint!r} is not an http(s) URL")
    if cloud.availability_zone and not cloud.region and len(cloud.availability_zone) < 2:
        problem(None, "cloud.availability-zone", f"{cloud.availability_zone!r} is not a zone name")
    if cloud.provider == Provider.LOCAL and not cloud.state_dir.startswith("/"):
        problem(None, "cloud.state-dir", f"{cloud.state_dir!r} must be an absolute path")

    for key, why in check_daemon(cfg.daemon):
        problem(None, f"daemon.{key}", why)

    if not cfg.drives:
        warnings.append(f"{path}: no drives are defined; bsud will have nothing to do")
    seen_names: dict[str, int] = {}
    seen_paths: dict[str, str] = {}
    for index, d in enumerate(cfg.drives):
        name = d.name
        why = check_drive_name(name)
        if why:
            problem(name or f"#{index + 1}", "name", why)
        if name in seen_names:
            problem(name, "name", f"duplicate drive name (drive #{seen_names[name] + 1} has it too)")
        seen_names.setdefault(name, index)
        why = check_mount_path(d.mount_path)
        if why:
            problem(name, "mount-path", why)
        else:
            normal = str(PurePosixPath(d.mount_path))
            for other_path, other in seen_paths.items():
                if normal == other_path:
                    problem(name, "mount-path", f"{normal!r} is also the mount path of drive {other!r}")
                elif normal.startswith(other_path + "/") or other_path.startswith(normal + "/"):
                    problem(name, "mount-path", f"{normal!r} and drive {other!r}'s {other_path!r} are nested; "
                            "give each drive its own directory")
            seen_paths.setdefault(normal, name)

        if not 0 < d.min_used_space_perc < d.max_used_space_perc <= 100:
            key = "max-used-space-perc" if d.max_used_space_perc > 100 else "min-used-space-perc"
            problem(name, key, f"need 0 < min-used-space-perc ({d.min_used_space_perc}) < "
                    f"max-used-space-perc ({d.max_used_space_perc}) <= 100")
        if not 1 <= d.disk_scale_factor_perc <= 100:
            problem(name, "disk-scale-factor-perc", f"must be between 1 and 100 (got {d.disk_scale_factor_perc})")
        elif 0 < d.min_used_space_perc < d.max_used_space_perc <= 100 and d.ha is None:
            warnings += _grow_then_shrink(d, name, path)
        for why in mount_option_problems(d.mount_options):
            problem(name, "mount-options", why)
        if d.from_snapshot_set is not None:
            if not re.fullmatch(r"[A-Za-z0-9+_.-]{1,127}", d.from_snapshot_set):
                problem(name, "from-snapshot-set", f"{d.from_snapshot_set!r} is not a snapshot set id (as 'bsud "
                        "snapshots' lists them, e.g. data-20261205T114958Z-4c90)")
            elif d.ha is not None:
                problem(name, "from-snapshot-set", "a highly available drive is not made from a snapshot set")
        attach = ATTACH_LIMITS[cloud.provider]
        if not 1 <= d.max_bsu_count <= attach.volumes:
            problem(name, "max-bsu-count", f"must be between 1 and {attach.volumes} ({attach.why}; "
                    f"got {d.max_bsu_count})")

        limits = volume_limits(cloud.provider, d.disk_type)
        if limits is None:
            allowed = ", ".join(sorted(LIMITS[cloud.provider]))
            problem(name, "disk-type", f"{d.disk_type.value!r} is not offered by provider "
                    f"{cloud.provider.value!r}; use one of {allowed}")
            continue
        if not limits.min_size <= d.initial_size_gib <= limits.max_size:
            problem(name, "initial-size-gib", f"must be between {limits.min_size} and {limits.max_size} GiB "
                    f"for {d.disk_type.value} volumes (got {d.initial_size_gib})")
        if d.max_total_size_gib is not None:
            ceiling = d.max_bsu_count * limits.max_size
            if d.max_total_size_gib < d.initial_size_gib:
                problem(name, "max-total-size-gib", f"({d.max_total_size_gib}) must be at least "
                        f"initial-size-gib ({d.initial_size_gib})")
            elif d.max_total_size_gib > ceiling:
                warnings.append(f"{path}: drive {name!r}: max-total-size-gib ({d.max_total_size_gib}) cannot be "
                                f"reached with {d.max_bsu_count} volumes of at most {limits.max_size} GiB")
        if d.disk_type in PROVISIONED_IOPS_TYPES:
            if d.disk_iops_per_gib is None and d.disk_iops is None:
                problem(name, "disk-iops-per-gib", f"is required with disk-type {d.disk_type.value} "
                        f"(IOPS per GiB, 1 to {limits.max_iops_per_gib}), or give disk-iops")
            elif d.disk_iops_per_gib is not None and d.disk_iops is not None:
                problem(name, "disk-iops", "give disk-iops (a fixed figure) or disk-iops-per-gib, not both")
            elif d.disk_iops_per_gib is None:
                pass
            elif not 1 <= d.disk_iops_per_gib <= (limits.max_iops_per_gib or 1_000_000):
                problem(name, "disk-iops-per-gib", f"must be between 1 and {limits.max_iops_per_gib} "
                        f"for {d.disk_type.value} (got {d.disk_iops_per_gib})")
        elif d.disk_iops_per_gib is not None:
            warnings.append(f"{path}: drive {name!r}: disk-iops-per-gib is ignored with "
                            f"disk-type {d.disk_type.value}")
        for key, why in check_volume_options(d, cloud, limits):
            problem(name, key, why)
    warnings += check_shared_slots(cfg.drives, cloud.provider, path)
    for key, why in check_all_exports(cfg.drives):
        problem(*key, why)
    for d in cfg.drives:
        if d.ha is not None:
            for key, why in check_ha(d.ha, d.exports, d.layout.value, d.name, d.mount_path):
                problem(d.name, f"ha.{key}" if key else "ha", why)
    for key, why in check_tags(cloud.tags):
        problem(None, f"cloud.{key}", why)
    if cloud.kms_key_id and not cloud.encrypted:
        problem(None, "cloud.kms-key-id", "needs \"encrypted\": true (a key encrypts nothing otherwise)")
    if (cloud.encrypted or cloud.kms_key_id) and cloud.provider not in ENCRYPTION_PROVIDERS:
        problem(None, "cloud.encrypted", f"provider {cloud.provider.value!r} cannot encrypt volumes at creation"
                + (" (Outscale FCU has no such option)" if cloud.provider == Provider.OUTSCALE else "")
                + "; remove it")
    return problems, warnings


def check_shared_slots(drives: Iterable[DriveConfig], provider: Provider, path: str) -> list[str]:
    """A warning when the online drives together may want more volumes than a VM takes: they share its slots.

    Not refused: it takes every drive at its max-bsu-count at once, and four drives at the default 10 already pass
    Outscale's 39. The drive that grows when the VM is full is blocked, and says so."""
    online = [d for d in drives if d.target == Target.ONLINE]
    wanted = sum(d.max_bsu_count for d in online)
    attach = ATTACH_LIMITS[provider]
    if len(online) < 2 or wanted <= attach.volumes:
        return []
    names = ", ".join(repr(d.name) for d in online)
    return [f"{path}: drives {names} may hold up to {wanted} volumes together (their max-bsu-count), more than one VM "
            f"takes ({attach.volumes}: {attach.why}); the drive that grows when the VM is full is blocked until "
            "volumes are freed"]


def check_all_exports(drives: Iterable[DriveConfig]) -> list[tuple[tuple[str, str], str]]:
    """((drive, field), why) for every export's own problems, and for two exports that would clash."""
    problems = []
    seen: dict[tuple[str, str], str] = {}
    for d in drives:
        for number, export in enumerate(d.exports, 1):
            where = f"exports #{number} ({export_name(export)})"
            problems += [((d.name, f"{where}.{key}"), why) for key, why in check_export(export)]
            for what, value in export_identities(d.name, export):
                other = seen.setdefault((what, value), f"drive {d.name!r} {where}")
                if other != f"drive {d.name!r} {where}":
                    problems.append(((d.name, where), f"the same {what} as {other}"))
    return problems


def with_cloud_defaults(d: DriveConfig, cloud: CloudSettings) -> DriveConfig:
    """A drive with the cloud section's volume defaults filled in (tags merged, the drive's winning)."""
    encrypted = cloud.encrypted if d.encrypted is None else d.encrypted
    return d.model_copy(update={
        "tags": {**cloud.tags, **(d.tags or {})},
        "encrypted": encrypted,
        "kms_key_id": (d.kms_key_id or cloud.kms_key_id) if encrypted else None,
    })


def check_tags(tags: dict[str, str], key_name: str = "tags") -> list[tuple[str, str]]:
    """(field, why) for user tags bsud cannot set."""
    problems = []
    for key, value in tags.items():
        if not key or len(key) > MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
            problems.append((key_name, f"tag {key!r}: keys are 1 to {MAX_TAG_KEY} characters, values at most "
                                       f"{MAX_TAG_VALUE}"))
        elif key.lower().startswith(RESERVED_TAG_PREFIXES):
            problems.append((key_name, f"tag {key!r}: keys starting with {' or '.join(RESERVED_TAG_PREFIXES)} are "
                                       "bsud's own or the cloud's; choose another key"))
    if len(tags) > MAX_TAGS - OWN_TAGS:
        problems.append((key_name, f"{len(tags)} tags: a volume holds {MAX_TAGS}, {OWN_TAGS} of them bsud's own"))
    return problems


def check_volume_options(d: DriveConfig, cloud: CloudSettings, limits: VolumeLimits) -> list[tuple[str, str]]:
    """(field, why) for a drive's volume options: tags, encryption, a fixed IOPS figure, throughput."""
    problems = check_tags(d.tags or {})
    merged = {**cloud.tags, **(d.tags or {})}
    if len(merged) > MAX_TAGS - OWN_TAGS and len(d.tags or {}) <= MAX_TAGS - OWN_TAGS:
        problems.append(("tags", f"{len(merged)} tags with cloud.tags: a volume holds {MAX_TAGS}, {OWN_TAGS} of "
                                 "them bsud's own"))
    encrypted = cloud.encrypted if d.encrypted is None else d.encrypted
    if (encrypted or d.kms_key_id) and cloud.provider not in ENCRYPTION_PROVIDERS:
        key = "encrypted" if d.encrypted or not d.kms_key_id else "kms-key-id"
        problems.append((key, f"provider {cloud.provider.value!r} cannot encrypt volumes at creation"
                         + (" (Outscale FCU has no such option)" if cloud.provider == Provider.OUTSCALE else "")
                         + "; remove it"))
    elif d.kms_key_id and not encrypted:
        problems.append(("kms-key-id", "needs \"encrypted\": true (a key encrypts nothing otherwise)"))
    kind = d.disk_type.value
    if d.disk_iops is not None:
        if d.disk_type not in IOPS_TYPES or limits.max_iops is None:
            problems.append(("disk-iops", f"is not offered with disk-type {kind} on {cloud.provider.value!r}"))
        else:
            per_gib = limits.max_iops_per_gib or limits.max_iops
            ceiling = min(limits.max_iops, max(limits.baseline_iops or 0, per_gib * d.initial_size_gib))
            if not limits.min_iops <= d.disk_iops <= ceiling:
                problems.append(("disk-iops", f"must be between {limits.min_iops} and {ceiling} for {kind} volumes of "
                                              f"{d.initial_size_gib} GiB or more (got {d.disk_iops})"))
    if d.disk_throughput is not None:
        if limits.max_throughput is None or limits.min_throughput is None:
            problems.append(("disk-throughput", f"is not offered with disk-type {kind} on "
                                                f"{cloud.provider.value!r} (gp3 only, on AWS)"))
        else:
            iops = d.disk_iops or limits.baseline_iops or limits.min_iops
            ceiling = min(limits.max_throughput, int(iops * (limits.max_throughput_per_iops or 1)))
            if not limits.min_throughput <= d.disk_throughput <= ceiling:
                problems.append(("disk-throughput", f"must be between {limits.min_throughput} and {ceiling} MiB/s "
                                                    f"with {iops} IOPS (got {d.disk_throughput})"))
    return problems
