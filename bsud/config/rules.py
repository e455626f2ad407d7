"""The rules a config must follow beyond its schema: names, paths, the cloud's limits, the daemon's options.

Pure functions of the parsed file: each problem is one :class:`ConfigError` naming the drive and field.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from bsud.config.catalogue import (
    LIMITS,
    MAX_VOLUMES_PER_VM,
    OUTSCALE_REGIONS,
    PROVISIONED_IOPS_TYPES,
    Provider,
    volume_limits,
)
from bsud.config.schema import DaemonSettings, _ConfigFile
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
        if not 1 <= d.max_bsu_count < MAX_VOLUMES_PER_VM:
            problem(name, "max-bsu-count", f"must be between 1 and {MAX_VOLUMES_PER_VM - 1} "
                    f"(a VM holds {MAX_VOLUMES_PER_VM} volumes, its root included; got {d.max_bsu_count})")

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
            if d.disk_iops_per_gib is None:
                problem(name, "disk-iops-per-gib", f"is required with disk-type {d.disk_type.value} "
                        f"(IOPS per GiB, 1 to {limits.max_iops_per_gib})")
            elif not 1 <= d.disk_iops_per_gib <= (limits.max_iops_per_gib or 1_000_000):
                problem(name, "disk-iops-per-gib", f"must be between 1 and {limits.max_iops_per_gib} "
                        f"for {d.disk_type.value} (got {d.disk_iops_per_gib})")
        elif d.disk_iops_per_gib is not None:
            warnings.append(f"{path}: drive {name!r}: disk-iops-per-gib is ignored with "
                            f"disk-type {d.disk_type.value}")
    return problems, warnings
