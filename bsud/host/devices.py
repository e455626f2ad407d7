"""Which block device is an attached volume — found by identity, verified by serial and size.

Block devices are read into plain dicts at the boundary (:func:`block_devices`), so the
rules in :func:`resolve_device` are pure and tested on recorded data. Each provider names the rules that
apply to its volumes (``CloudProvider.device_rules``); all of them, in order:

1. AWS Nitro NVMe: the controller's serial is the volume id without its dash;
2. virtio-blk: the disk serial is the volume id (virtio keeps at most 20 bytes);
3. Outscale virtio-scsi: the SCSI serial is ``sd<suffix>`` of the requested ``/dev/xvd<suffix>``;
4. the requested name itself, or a link of that name (Outscale's udev rules);
5. the local provider: a loop device whose backing file is the volume's file.

A match by identity whose size differs is refused with an error naming both; the name
rule is refused when the device carries another volume's serial.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bsud.errors import BsudError
from bsud.logs import get_logger
from bsud.naming import GIB, device_suffix

log = get_logger("bsud.host.devices")

VIRTIO_SERIAL_MAX = 20
NVME_SERIAL, VIRTIO_SERIAL, SCSI_SERIAL = "nvme serial", "virtio serial", "scsi serial"
REQUESTED_NAME, LOOP_BACKING_FILE = "requested name", "loop backing file"


class DeviceMismatch(BsudError):
    """A device claims to be a volume but its size or serial says otherwise (never used)."""


class DeviceNotFound(BsudError):
    temporary = True


@dataclass(frozen=True)
class VolumeRef:
    """What we know of an attached volume from the cloud."""

    volume_id: str
    size_bytes: int
    requested_device: str | None = None
    backing_file: str | None = None

    @classmethod
    def from_volume(cls, volume: Any, instance_id: str) -> VolumeRef:
        att = volume.attachment_to(instance_id)
        return cls(volume.id, volume.size_gib * GIB, att.device if att else None, volume.backing_file)


@dataclass(frozen=True)
class Resolution:
    """A verified answer: ``device`` is the volume, by ``rule``."""

    volume_id: str
    device: str
    rule: str
    size_bytes: int
    serial: str | None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _scsi_serial(sysdir: Path) -> str | None:
    """Unit serial number from VPD page 0x80 (4-byte header, then the serial)."""
    try:
        raw = (sysdir / "device" / "vpd_pg80").read_bytes()
    except OSError:
        return None
    return raw[4:].decode(errors="replace").strip("\x00 ").strip() or None


def device_record(name: str, sys_block: Path = Path("/sys/block"), dev: Path = Path("/dev"),
                  links: Iterable[str] = ()) -> dict[str, Any]:
    """One block device as a plain dict, read from sysfs."""
    sysdir = sys_block / name
    size = _read(sysdir / "size")
    record: dict[str, Any] = {
        "name": name,
        "path": str(dev / name),
        "size_bytes": int(size) * 512 if size and size.isdigit() else 0,
        "transport": "other",
        "serial": None,
        "backing_file": None,
        "links": sorted(links),
    }
    if name.startswith("nvme"):
        record["transport"] = "nvme"
        record["serial"] = _read(sysdir / "device" / "serial")
    elif name.startswith("vd"):
        record["transport"] = "virtio"
        record["serial"] = _read(sysdir / "serial")
    elif name.startswith("sd"):
        record["transport"] = "scsi"
        record["serial"] = _scsi_serial(sysdir)
    elif name.startswith("loop"):
        record["transport"] = "loop"
        record["backing_file"] = _read(sysdir / "loop" / "backing_file")
    return record


def _links_by_device(dev: Path = Path("/dev")) -> dict[str, list[str]]:
    """Symlinks under /dev/disk/by-id and /dev/xvd* (when udev made them), per kernel name."""
    found: dict[str, list[str]] = {}
    candidates = []
    by_id = dev / "disk" / "by-id"
    if by_id.is_dir():
        candidates += list(by_id.iterdir())
    candidates += [p for p in dev.glob("xvd*") if p.is_symlink()]
    for link in candidates:
        try:
            target = os.path.basename(os.path.realpath(link))
        except OSError:
            continue
        found.setdefault(target, []).append(str(link))
    return found


def block_devices(sys_block: Path = Path("/sys/block"), dev: Path = Path("/dev")) -> list[dict[str, Any]]:
    """Every whole disk the kernel shows, as plain dicts."""
    links = _links_by_device(dev)
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return []
    return [device_record(n, sys_block, dev, links.get(n, ())) for n in names if not n.startswith(("ram", "zram"))]


def _size_checked(ref: VolumeRef, dev: dict[str, Any], rule: str) -> Resolution:
    if dev["size_bytes"] != ref.size_bytes:
        raise DeviceMismatch(
            f"volume {ref.volume_id}: {dev['path']} matches it by {rule} but has {dev['size_bytes']} bytes, "
            f"the volume {ref.size_bytes}; not using it"
        )
    return Resolution(ref.volume_id, dev["path"], rule, dev["size_bytes"], dev.get("serial"))


def _foreign_identity(dev: dict[str, Any], ref: VolumeRef) -> str | None:
    """The other volume a device says it is, when its serial names one."""
    serial = (dev.get("serial") or "").strip()
    if dev["transport"] == "nvme" and serial.startswith("vol") and serial != ref.volume_id.replace("-", ""):
        return serial
    if dev["transport"] == "virtio" and serial.startswith("vol-") and serial != ref.volume_id[:VIRTIO_SERIAL_MAX]:
        return serial
    return None


def _by_nvme_serial(ref: VolumeRef, devices: list[dict[str, Any]]) -> Resolution | None:
    serial = ref.volume_id.replace("-", "")
    for dev in devices:
        if dev["transport"] == "nvme" and (dev.get("serial") or "").strip() == serial:
            return _size_checked(ref, dev, NVME_SERIAL)
    return None


def _by_virtio_serial(ref: VolumeRef, devices: list[dict[str, Any]]) -> Resolution | None:
    for dev in devices:
        if dev["transport"] == "virtio" and (dev.get("serial") or "").strip() == ref.volume_id[:VIRTIO_SERIAL_MAX]:
            return _size_checked(ref, dev, VIRTIO_SERIAL)
    return None


def _requested_suffix(name: str) -> str | None:
    """The letters of a name bsud requests (``/dev/xvd<letters>`` or ``/dev/sd<letters>``, no partition)."""
    return device_suffix(name, ("xvd", "sd"), partitions=False)


def _by_scsi_serial(ref: VolumeRef, devices: list[dict[str, Any]]) -> Resolution | None:
    suffix = _requested_suffix(ref.requested_device or "")
    if suffix:
        for dev in devices:
            if dev["transport"] == "scsi" and (dev.get("serial") or "").strip() == f"sd{suffix}":
                return _size_checked(ref, dev, SCSI_SERIAL)
    return None


def _by_requested_name(ref: VolumeRef, devices: list[dict[str, Any]]) -> Resolution | None:
    requested = ref.requested_device
    if not requested:
        return None
    suffix = _requested_suffix(requested)
    for dev in devices:
        if dev["path"] == requested or requested in dev.get("links", []):
            other = _foreign_identity(dev, ref)
            if other:
                raise DeviceMismatch(f"volume {ref.volume_id}: {requested} is {dev['path']} whose serial "
                                     f"{other!r} names another volume; not using it")
            if dev["transport"] == "scsi" and suffix and dev.get("serial") and \
                    dev["serial"].startswith("sd") and dev["serial"] != f"sd{suffix}":
                raise DeviceMismatch(f"volume {ref.volume_id}: {requested} is {dev['path']} whose SCSI serial "
                                     f"{dev['serial']!r} belongs to another attachment; not using it")
            return _size_checked(ref, dev, REQUESTED_NAME)
    return None


def _by_loop_backing_file(ref: VolumeRef, devices: list[dict[str, Any]]) -> Resolution | None:
    if not ref.backing_file:
        return None
    wanted = os.path.realpath(ref.backing_file)
    for dev in devices:
        if dev["transport"] == "loop" and dev.get("backing_file") and \
                os.path.realpath(dev["backing_file"].removesuffix(" (deleted)")) == wanted:
            return _size_checked(ref, dev, LOOP_BACKING_FILE)
    return None


Rule = Callable[[VolumeRef, list[dict[str, Any]]], "Resolution | None"]

#: Every identity rule by name. A provider names the ones that apply to its volumes, in order
#: (``CloudProvider.device_rules``): a strong identity (a serial) before the requested name.
RULES: dict[str, Rule] = {
    NVME_SERIAL: _by_nvme_serial,
    VIRTIO_SERIAL: _by_virtio_serial,
    SCSI_SERIAL: _by_scsi_serial,
    REQUESTED_NAME: _by_requested_name,
    LOOP_BACKING_FILE: _by_loop_backing_file,
}


def resolve_device(ref: VolumeRef, devices: list[dict[str, Any]],
                   rules: Iterable[str] = tuple(RULES)) -> Resolution | None:
    """The device of ``ref`` among ``devices`` by the first of ``rules`` that finds it (pure), None when it
    has not appeared yet."""
    for name in rules:
        found = RULES[name](ref, devices)
        if found is not None:
            return found
    return None


def udevd_running() -> bool:
    return os.path.exists("/run/udev/control")


def udev_initialized(device: str) -> bool:
    """Whether udevd has finished its rules on a block device (its /dev/disk links are made, its db written)."""
    try:
        import pyudev

        return bool(pyudev.Devices.from_device_file(pyudev.Context(), device).is_initialized)
    except Exception:  # noqa: BLE001 - gone, not a device node yet, no libudev: not ready
        return False


class DeviceWaiter:
    """Waits for a volume's device with pyudev events (started before the attach), polling sysfs too.

    Uses udev events where udevd runs, kernel events elsewhere. Sysfs can show a disk before udevd has run its
    rules on it (slow ones, scsi_id, under load), so where udevd runs a device is only handed out once udev has
    initialized it: its links exist and LVM's udev rules have seen it before bsud writes to it.
    """

    def __init__(self) -> None:
        self.monitor: Any = None
        try:
            import pyudev

            context = pyudev.Context()
            source = "udev" if udevd_running() else "kernel"
            monitor = pyudev.Monitor.from_netlink(context, source=source)
            monitor.filter_by("block")
            monitor.start()
            self.monitor = monitor
            self.source = source
        except Exception as exc:  # noqa: BLE001 - no netlink (unprivileged, container): poll only
            log.debug("no udev monitor, polling sysfs", error=str(exc))
            self.source = "poll"

    def __enter__(self) -> DeviceWaiter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.monitor = None

    def _pause(self, seconds: float) -> None:
        if self.monitor is not None:
            self.monitor.poll(timeout=seconds)
            # Drain whatever else queued: the next resolve reads fresh sysfs anyway.
            while self.monitor.poll(timeout=0) is not None:
                pass
        else:
            time.sleep(seconds)

    def wait(self, ref: VolumeRef, rules: Iterable[str], timeout: float = 60.0) -> Resolution:
        deadline = time.monotonic() + timeout
        while True:
            found = resolve_device(ref, block_devices(), rules)
            if found is not None and (self.source != "udev" or udev_initialized(found.device)):
                log.info("device found", volume=ref.volume_id, device=found.device, rule=found.rule)
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0 and found is not None:
                raise DeviceNotFound(
                    f"volume {ref.volume_id} is {found.device} (by {found.rule}) but udev has not finished with it "
                    f"within {timeout:g} s; see `udevadm info {found.device}` and the journal of systemd-udevd"
                )
            if remaining <= 0:
                raise DeviceNotFound(
                    f"volume {ref.volume_id} (attached as {ref.requested_device}) did not appear as a block "
                    f"device within {timeout:g} s"
                )
            self._pause(min(remaining, 1.0))


def find_device(ref: VolumeRef, rules: Iterable[str] = tuple(RULES)) -> Resolution | None:
    """Resolve without waiting (for observing the current state)."""
    return resolve_device(ref, block_devices(), rules)
