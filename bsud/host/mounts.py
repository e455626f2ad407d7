"""Mount points: read from /proc/self/mountinfo, mount and unmount with checks.

bsud mounts only on an empty directory that holds no other filesystem, and when an
unmount is refused as busy it says which processes hold the mount.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from bsud.errors import BsudError, CommandError
from bsud.logs import get_logger
from bsud.runner import Runner

log = get_logger("bsud.host.mounts")

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    major_minor: str
    root: str
    mount_point: str
    options: str
    fstype: str
    source: str
    super_options: str


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse /proc/self/mountinfo (man 5 proc); octal escapes (\\040 for space) are decoded."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(" - ")
        fields = left.split()
        tail = right.split()
        if len(fields) < 6 or len(tail) < 2:
            continue
        entries.append(
            MountEntry(
                mount_id=int(fields[0]),
                major_minor=fields[2],
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=fields[5],
                fstype=tail[0],
                source=_unescape(tail[1]),
                super_options=tail[2] if len(tail) > 2 else "",
            )
        )
    return entries


def read_mounts(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    with open(path) as fh:
        return parse_mountinfo(fh.read())


def mount_at(mount_point: str, mounts: list[MountEntry] | None = None) -> MountEntry | None:
    """The filesystem mounted on ``mount_point`` (the top one when stacked), if any."""
    target = os.path.normpath(mount_point)
    found = None
    for entry in mounts if mounts is not None else read_mounts():
        if entry.mount_point == target:
            found = entry
    return found


def forced_read_only(entry: MountEntry) -> bool:
    """Mounted read-write, but the filesystem itself is read-only: the kernel turned it so after errors
    (btrfs aborts its transaction on a write error). A ``mount -o remount,ro`` changes both flags."""
    return "rw" in entry.options.split(",") and "ro" in entry.super_options.split(",")


def holders_of(mount_point: str) -> list[str]:
    """``pid (comm)`` of processes using files under ``mount_point`` (cwd, root, open files, maps)."""
    base = os.path.normpath(mount_point)
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        if int(pid) == os.getpid():
            continue
        uses = False
        try:
            links = [f"/proc/{pid}/cwd", f"/proc/{pid}/root", f"/proc/{pid}/exe"]
            try:
                links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
            except OSError:
                pass
            for link in links:
                try:
                    target = os.readlink(link)
                except OSError:
                    continue
                if target == base or target.startswith(base + "/"):
                    uses = True
                    break
            if not uses:
                with open(f"/proc/{pid}/maps") as maps:
                    uses = any(f" {base}/" in line for line in maps)
            if uses:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                found.append(f"{pid} ({comm})")
        except OSError:
            continue
    return found


class MountError(BsudError):
    pass


def check_mount_point_free(mount_point: str, mounts: list[MountEntry] | None = None) -> None:
    """Refuse a mount point that holds another filesystem or files (nothing would be hidden)."""
    existing = mount_at(mount_point, mounts)
    if existing is not None:
        raise MountError(f"{mount_point} already holds a {existing.fstype} filesystem from {existing.source}; "
                         "unmount it or choose another mount-path")
    if os.path.isdir(mount_point) and any(os.scandir(mount_point)):
        raise MountError(f"{mount_point} is not empty; bsud mounts only on an empty directory "
                         "(move its content away or choose another mount-path)")
    if os.path.exists(mount_point) and not os.path.isdir(mount_point):
        raise MountError(f"{mount_point} exists and is not a directory")


def mount(runner: Runner, device: str, mount_point: str, options: str | None = None) -> None:
    """Mount ``device`` on ``mount_point`` (created if missing) after :func:`check_mount_point_free`."""
    check_mount_point_free(mount_point)
    os.makedirs(mount_point, mode=0o755, exist_ok=True)
    argv = ["mount"]
    if options:
        argv += ["-o", options]
    runner.run([*argv, device, mount_point], timeout=120)


def remount(runner: Runner, mount_point: str, options: tuple[str, ...]) -> None:
    """``mount -o remount,<options>`` of a mounted filesystem (the options it changes take effect at once)."""
    runner.run(["mount", "-o", ",".join(("remount", *options)), mount_point], timeout=120)


def unmount(runner: Runner, mount_point: str) -> None:
    """Unmount; when busy, the error names the processes holding it."""
    if mount_at(mount_point) is None:
        return
    try:
        runner.run(["umount", mount_point], timeout=300)
    except CommandError as exc:
        if "busy" in (exc.stderr + exc.stdout).lower():
            holders = holders_of(mount_point)
            who = ", ".join(holders) if holders else "unknown processes (or a nested mount)"
            raise MountError(f"cannot unmount {mount_point}: busy, held by {who}", temporary=True) from None
        raise
