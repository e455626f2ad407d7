"""A drive's ``mount-options``: which btrfs and VFS options bsud accepts, and how the kernel shows each in effect.

bsud mounts its drives itself (and the promoter's Filesystem agent mounts an ``ha`` drive), so the options live in
the drive's definition, not in /etc/fstab. Each option is checked at load against what btrfs(5) and mount(8)
accept — a typo is one line at load, not a mount that fails at boot — and some are refused because they would undo
what bsud relies on (below). Applied at every mount; on a mounted drive, an option the kernel does not show in
effect is applied by ``mount -o remount`` (btrfs changes all of those accepted here on a remount: measured on
kernel 6.18, tests/host/test_mount_options.py). An option dropped from the config is gone at the next mount.

How an option shows in /proc/self/mountinfo (the mount's and the superblock's options, measured on 6.18): btrfs
prints what differs from its defaults, with the algorithm's level filled in (``compress`` → ``compress=zlib:3``,
``compress=zstd`` → ``compress=zstd:3``), ``discard`` (sync) as ``discard``, ``nodatacow`` as
``nodatasum,nodatacow``; a default given explicitly (``acl``, ``barrier``, ``commit=30``) shows as the absence of
its opposite. ``thread_pool=N`` does not show at all: taken at mount, never checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: The algorithms of ``compress`` / ``compress-force``, with the level range the kernel takes and its default
#: (``None``: no level). zstd's negative levels (kernel 6.15+) are left out: Debian 12's kernel refuses them.
COMPRESSION = {"zlib": (1, 9, 3), "zstd": (1, 15, 3), "lzo": None}

#: Flags the kernel shows when set (btrfs's own, or the VFS's), with the default they replace (shown as absent).
SHOWN_FLAGS = {
    "noatime": (), "relatime": (), "nodiratime": (), "lazytime": (), "noexec": (), "nosuid": (), "nodev": (),
    "autodefrag": (), "nobarrier": (), "noacl": (), "notreelog": (), "flushoncommit": (), "ssd": (), "nossd": (),
    "ssd_spread": (), "nodatasum": (), "nodatacow": (), "user_subvol_rm_allowed": (), "skip_balance": (),
}
#: Defaults given explicitly: in effect when their opposites are not shown.
DEFAULT_FLAGS = {
    "exec": ("noexec",), "suid": ("nosuid",), "dev": ("nodev",), "diratime": ("nodiratime",),
    "noautodefrag": ("autodefrag",), "barrier": ("nobarrier",), "acl": ("noacl",), "treelog": ("notreelog",),
    "noflushoncommit": ("flushoncommit",), "datacow": ("nodatacow",), "datasum": ("nodatasum",),
    "nodiscard": ("discard", "discard=async"), "rw": (),
}
#: ``key=N`` options: the range taken and the kernel's default (shown as the key's absence).
NUMBERS = {"commit": (1, 300, 30), "max_inline": (0, 4096, 2048), "metadata_ratio": (0, 10_000, 0),
           "thread_pool": (1, 1024, None)}
#: Options refused, and why (the line says what to do instead).
REFUSED = {
    "ro": "bsud writes to its drives (growing, moving data); a read-only drive is not something it can keep",
    "degraded": "it mounts a drive with a volume missing; bsud blocks such a drive and says what is missing",
    "device": "bsud finds the drive's devices itself (from the cloud's tags)",
    "subvol": "bsud mounts the whole filesystem: its space and its removals are the whole's",
    "subvolid": "bsud mounts the whole filesystem: its space and its removals are the whole's",
    "nologreplay": "a recovery option: mount the drive by hand for that (after 'bsud offline')",
    "norecovery": "a recovery option: mount the drive by hand for that (after 'bsud offline')",
    "rescue": "a recovery option: mount the drive by hand for that (after 'bsud offline')",
    "usebackuproot": "a recovery option: mount the drive by hand for that (after 'bsud offline')",
    "recovery": "a recovery option: mount the drive by hand for that (after 'bsud offline')",
    "clear_cache": "a one-off repair: mount the drive by hand for that (after 'bsud offline')",
    "space_cache": "the free space tree (v2) is the default already, the v1 cache deprecated: leave it out",
    "nospace_cache": "the free space tree (v2) is the default already, the v1 cache deprecated: leave it out",
    "fatal_errors": "fatal_errors=panic brings the whole VM down on a filesystem error",
    "check_int": "a debugging option of kernels built with it",
    "enospc_debug": "a debugging option",
    "fragment": "a debugging option",
    "ref_verify": "a debugging option",
    "defaults": "give the options themselves (bsud's mount already uses the defaults)",
}


@dataclass(frozen=True)
class Shown:
    """How an option shows in effect: every one of ``present`` is among the mount's options, none of ``absent``
    (a name in ``absent`` ending in ``=`` stands for any value of that key). ``checked`` False: not shown at all."""

    present: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    checked: bool = True

    def holds(self, options: set[str]) -> bool:
        if not self.checked:
            return True
        if any(p not in options for p in self.present):
            return False
        for name in self.absent:
            if name.endswith("="):
                if any(o.startswith(name) for o in options):
                    return False
            elif name in options:
                return False
        return True


def split(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"compress=zstd:3,noatime"`` or ``["compress=zstd:3", "noatime"]`` → the options, blanks dropped."""
    parts = value.split(",") if isinstance(value, str) else [p for item in value for p in str(item).split(",")]
    return tuple(p.strip() for p in parts if p.strip())


def problem(option: str) -> str | None:
    """Why ``option`` is refused (one clause, naming it), or None when bsud takes it."""
    key, eq, value = option.partition("=")
    if key in REFUSED:
        return f"{option!r} is refused: {REFUSED[key]}"
    if key in ("compress", "compress-force"):
        if not eq or value == "no" and key == "compress":
            return None
        algorithm, colon, level = value.partition(":")
        if algorithm not in COMPRESSION:
            return f"{option!r}: the algorithms are {', '.join(COMPRESSION)} (e.g. compress=zstd:3)"
        bounds = COMPRESSION[algorithm]
        if colon:
            if bounds is None:
                return f"{option!r}: {algorithm} takes no level"
            if not re.fullmatch(r"\d+", level) or not bounds[0] <= int(level) <= bounds[1]:
                return f"{option!r}: {algorithm}'s level is {bounds[0]} to {bounds[1]}"
        return None
    if key == "discard":
        return None if not eq or value in ("sync", "async") else f"{option!r}: discard takes sync or async"
    if key in NUMBERS:
        low, high, _ = NUMBERS[key]
        if not eq or not re.fullmatch(r"\d+", value) or not low <= int(value) <= high:
            return f"{option!r}: {key} takes a number from {low} to {high}"
        return None
    if not eq and (key in SHOWN_FLAGS or key in DEFAULT_FLAGS or key == "compress"):
        return None
    return (f"{option!r} is not a btrfs or mount option bsud knows; see btrfs(5) 'MOUNT OPTIONS' "
            "(e.g. compress=zstd:3, noatime, autodefrag, commit=60, discard=async)")


def problems(options: Iterable[str]) -> list[str]:
    """Every refused option, a clause each; also two options that contradict each other."""
    found = [why for option in options if (why := problem(option))]
    wanted = {o.partition("=")[0]: o for o in options}
    for flag, opposites in DEFAULT_FLAGS.items():
        for other in opposites:
            if flag in wanted and other.partition("=")[0] in wanted and wanted[other.partition("=")[0]] != flag:
                found.append(f"{flag!r} and {wanted[other.partition('=')[0]]!r} contradict each other; keep one")
    return list(dict.fromkeys(found))


def shown(option: str) -> Shown:
    """How ``option`` (accepted by :func:`problem`) shows in effect in /proc/self/mountinfo."""
    key, eq, value = option.partition("=")
    if key in ("compress", "compress-force"):
        if key == "compress" and value == "no":
            return Shown(absent=("compress=", "compress-force="))
        algorithm, _, level = (value or "zlib").partition(":")
        bounds = COMPRESSION.get(algorithm)
        spelled = f"{key}={algorithm}" + (f":{level or bounds[2]}" if bounds else "")
        return Shown(present=(spelled,))
    if key == "discard":
        return Shown(present=("discard=async",) if value == "async" else ("discard",))
    if key == "nodatacow":
        return Shown(present=("nodatacow", "nodatasum"))
    if key in NUMBERS:
        default = NUMBERS[key][2]
        if default is None:
            return Shown(checked=False)
        return Shown(absent=(f"{key}=",)) if int(value) == default else Shown(present=(option,))
    if key in DEFAULT_FLAGS:
        return Shown(absent=DEFAULT_FLAGS[key])
    return Shown(present=(option,))


def missing(wanted: Iterable[str], mount_options: str, super_options: str = "") -> list[str]:
    """The options of ``wanted`` the mount does not show in effect (its options and its superblock's, as
    /proc/self/mountinfo gives them)."""
    have = set(mount_options.split(",")) | set(super_options.split(","))
    return [option for option in wanted if not shown(option).holds(have)]
