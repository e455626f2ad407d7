"""btrfs: make, grow, shrink, add and remove devices, and usage that is right for btrfs.

Parsers read ``btrfs filesystem usage -b`` and ``btrfs filesystem show --raw`` (machine
friendly raw byte counts). statvfs is not used for used %: it counts DUP copies and drops
available space to 0 when metadata runs out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bsud.errors import CommandError
from bsud.logs import get_logger
from bsud.runner import Runner

log = get_logger("bsud.host.btrfs")

#: Shrinking relocates data: allow it hours on big volumes.
RELOCATION_TIMEOUT = 24 * 3600.0
#: Cancelling a relocation waits for the kernel to stop it (at its next check: within the extent being moved).
RELOCATION_CANCEL_TIMEOUT = 600.0
#: Growing into a device's new space (``resize max``): instant unless the filesystem cannot commit.
GROW_TIMEOUT = 60.0
#: The largest data chunk btrfs allocates on a device (its stripe; smaller on a filesystem under 10 GiB). Not sysfs's
#: ``allocation/data/chunk_size``, which says 10 GiB: the most a chunk may span over several devices.
DATA_CHUNK_BYTES = 1024**3
#: The smallest device btrfs accepts (and the least a shrunk filesystem is given).
MIN_DEVICE_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class Usage:
    """Space of a mounted btrfs, in bytes."""

    device_size: int
    allocated: int
    unallocated: int
    slack: int
    used: int
    free_estimated: int
    free_min: int
    data_size: int
    data_used: int
    metadata_size: int
    metadata_used: int
    metadata_ratio: float
    data_ratio: float = 1.0
    system_size: int = 0
    system_used: int = 0

    @property
    def used_percent(self) -> float:
        """used / (used + available) — what the user can still write, not raw blocks."""
        total = self.used + self.free_estimated
        return 100.0 * self.used / total if total else 0.0

    @property
    def metadata_free(self) -> int:
        return max(0, self.metadata_size - self.metadata_used)


_NUM = r"(-?\d+)"


def _field(text: str, label: str) -> int:
    m = re.search(rf"^\s*{re.escape(label)}:\s+{_NUM}", text, re.MULTILINE)
    if not m:
        raise ValueError(f"btrfs usage output has no {label!r}")
    return int(m.group(1))


def parse_usage(text: str) -> Usage:
    """Parse ``btrfs filesystem usage -b``."""
    free = re.search(rf"Free \(estimated\):\s+{_NUM}\s+\(min:\s+{_NUM}\)", text)
    if not free:
        raise ValueError("btrfs usage output has no 'Free (estimated)'")
    data = re.search(rf"^Data,[^:]+:\s+Size:{_NUM},\s+Used:{_NUM}", text, re.MULTILINE)
    meta = re.search(rf"^Metadata,[^:]+:\s+Size:{_NUM},\s+Used:{_NUM}", text, re.MULTILINE)
    system = re.search(rf"^System,[^:]+:\s+Size:{_NUM},\s+Used:{_NUM}", text, re.MULTILINE)
    ratio = re.search(r"Metadata ratio:\s+([\d.]+)", text)
    data_ratio = re.search(r"Data ratio:\s+([\d.]+)", text)
    return Usage(
        device_size=_field(text, "Device size"),
        allocated=_field(text, "Device allocated"),
        unallocated=_field(text, "Device unallocated"),
        slack=_field(text, "Device slack"),
        used=_field(text, "Used"),
        free_estimated=int(free.group(1)),
        free_min=int(free.group(2)),
        data_size=int(data.group(1)) if data else 0,
        data_used=int(data.group(2)) if data else 0,
        metadata_size=int(meta.group(1)) if meta else 0,
        metadata_used=int(meta.group(2)) if meta else 0,
        metadata_ratio=float(ratio.group(1)) if ratio else 1.0,
        data_ratio=float(data_ratio.group(1)) if data_ratio else 1.0,
        system_size=int(system.group(1)) if system else 0,
        system_used=int(system.group(2)) if system else 0,
    )


@dataclass(frozen=True)
class FsDevice:
    devid: int
    size: int
    used: int
    path: str


@dataclass(frozen=True)
class Filesystem:
    label: str | None
    uuid: str
    devices: tuple[FsDevice, ...]
    missing: bool = False

    def devid_of(self, path: str) -> int | None:
        for dev in self.devices:
            if dev.path == path:
                return dev.devid
        return None


def parse_show(text: str) -> list[Filesystem]:
    """Parse ``btrfs filesystem show --raw`` (one or several filesystems)."""
    found: list[Filesystem] = []
    label: str | None = None
    uuid: str | None = None
    devices: list[FsDevice] = []
    missing = False

    def flush() -> None:
        if uuid:
            found.append(Filesystem(label, uuid, tuple(devices), missing))

    for line in text.splitlines():
        head = re.match(r"^Label:\s+(?:'(.*)'|none)\s+uuid:\s+(\S+)", line)
        if head:
            flush()
            label, uuid, devices, missing = head.group(1), head.group(2), [], False
            continue
        dev = re.match(rf"^\s+devid\s+{_NUM}\s+size\s+{_NUM}\s+used\s+{_NUM}\s+path\s+(\S+)", line)
        if dev:
            devices.append(FsDevice(int(dev.group(1)), int(dev.group(2)), int(dev.group(3)), dev.group(4)))
        elif "missing" in line.lower() and uuid:
            missing = True
    flush()
    return found


class Btrfs:
    """btrfs commands, each idempotent where btrfs allows it."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def mkfs(self, device: str, label: str) -> None:
        """New filesystem on one device: single data, DUP metadata; ``-K`` skips the slow TRIM.

        Never ``-f``: mkfs refuses a device with a signature, a second line of defence behind the gate.
        """
        self.runner.run(["mkfs.btrfs", "-K", "-L", label, "-d", "single", "-m", "dup", device], timeout=600)

    def scan(self, devices: list[str] | None = None) -> None:
        self.runner.run(["btrfs", "device", "scan", *(devices or [])], timeout=120, quiet=True)

    def forget(self, device: str) -> None:
        self.runner.run(["btrfs", "device", "scan", "--forget", device], timeout=60, check=False, quiet=True)

    def show(self, target: str) -> Filesystem | None:
        out = self.runner.run(["btrfs", "filesystem", "show", "--raw", target], timeout=120, check=False,
                              quiet=True)
        if out.returncode != 0:
            return None
        found = parse_show(out.stdout)
        return found[0] if found else None

    def usage(self, mount_point: str) -> Usage:
        out = self.runner.run(["btrfs", "filesystem", "usage", "-b", mount_point], timeout=120, quiet=True)
        return parse_usage(out.stdout)

    def device_usage(self, mount_point: str) -> str:
        """``btrfs device usage -b``: what is allocated on each device (the fallback for the live data per device)."""
        return self.runner.run(["btrfs", "device", "usage", "-b", mount_point], timeout=120, quiet=True).stdout

    def device_add(self, device: str, mount_point: str) -> None:
        """Add a (gate-checked, blank) device; never ``-f``."""
        self.runner.run(["btrfs", "device", "add", "-K", device, mount_point], timeout=600)

    def device_remove(self, device: str, mount_point: str) -> None:
        """Remove a device, relocating its data onto the others (long: hours on big volumes)."""
        self.runner.run(["btrfs", "device", "remove", device, mount_point], timeout=RELOCATION_TIMEOUT)

    def device_remove_cancel(self, mount_point: str) -> None:
        """Stop a ``device remove`` under way (kernel 5.14+; run from another thread): the kernel stops relocating
        at its next check and this returns once it did — with an error, "Operation canceled", which is the answer
        (anything else is raised). The chunks already relocated stay where they went; the device keeps its place,
        gets its size back and takes new chunks again. Fails while no removal runs."""
        self._cancel(["btrfs", "device", "remove", "cancel", mount_point])

    def resize_cancel(self, mount_point: str) -> None:
        """Stop a shrinking resize under way (kernel 5.14+), as :meth:`device_remove_cancel`: the size goes back."""
        self._cancel(["btrfs", "filesystem", "resize", "cancel", mount_point])

    def balance_cancel(self, mount_point: str) -> None:
        """Stop a balance under way (it ends after the chunk it is relocating)."""
        self.runner.run(["btrfs", "balance", "cancel", mount_point], timeout=RELOCATION_CANCEL_TIMEOUT)

    def _cancel(self, argv: list[str]) -> None:
        # btrfs-progs exits 1 for any error: "Operation canceled" is told apart by its text.
        out = self.runner.run(argv, timeout=RELOCATION_CANCEL_TIMEOUT, ok_codes=(0, 1))
        if out.returncode != 0 and "canceled" not in (out.stderr + out.stdout).lower():
            raise CommandError(argv, out.returncode, out.stdout, out.stderr)

    def compact(self, mount_point: str, usage_percent: int = 50) -> None:
        """Rewrite the data and metadata chunks at most ``usage_percent`` used into fewer, full ones (a balance
        with usage filters: it moves only what those chunks hold), which frees the room they took."""
        self.runner.run(["btrfs", "balance", "start", f"-dusage={usage_percent}", f"-musage={usage_percent}",
                         mount_point], timeout=RELOCATION_TIMEOUT)

    def resize(self, mount_point: str, devid: int, size: int | str) -> None:
        """``size`` is ``"max"`` or bytes; shrinking relocates data and may fail with ENOSPC. Growing is one
        transaction: it gets a minute, not the day a relocation may take (a grow that hangs — a frozen or failing
        device — is then seen as stuck within a minute: see bsud.watch)."""
        amount = size if isinstance(size, str) else str(int(size))
        self.runner.run(["btrfs", "filesystem", "resize", f"{devid}:{amount}", mount_point],
                        timeout=GROW_TIMEOUT if amount == "max" else RELOCATION_TIMEOUT)
