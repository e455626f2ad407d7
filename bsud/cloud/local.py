"""The local provider: volumes are sparse files, attach is a loop device.

For trying bsud without a cloud, for development and for CI. Layout of ``cloud.state-dir``::

    volumes.json        tags, size, type of every volume and snapshot (rewritten atomically)
    volumes/<id>.img    the sparse file behind each volume
    snapshots/<id>.img  a snapshot: a copy of its volume's file made at the call (a reflink where the filesystem
                        under state-dir has them, else a sparse copy: its time grows with the data)
    .lock               flock taken around every operation (two processes are safe)

Attachment is not stored: a volume is attached when a loop device is backed by its file,
read back from ``losetup --json --list`` (after a reboot every volume is available again,
as with a cloud VM that lost its attachments).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bsud.cloud.base import (
    Attachment,
    CloudProvider,
    Identity,
    Snapshot,
    Volume,
    VolumeOptions,
    choose_device_name,
)
from bsud.config import CloudSettings, Config
from bsud.errors import AttachmentLimitError, CloudError, VolumeStateError
from bsud.logs import get_logger
from bsud.naming import AVAILABLE, COMPLETED, DRIVE_TAG, GIB, IN_USE, SNAPSHOT_SET_TAG
from bsud.runner import Runner

log = get_logger("bsud.cloud.local")


def local_identity(settings: CloudSettings) -> Identity:
    instance_id = settings.instance_id
    if not instance_id:
        try:
            machine = Path("/etc/machine-id").read_text().strip()[:12]
        except OSError:
            machine = ""
        instance_id = f"i-local-{machine or socket.gethostname()}"
    zone = settings.availability_zone or "local-1a"
    return Identity(instance_id=instance_id, availability_zone=zone, region=settings.region or zone[:-1])


class LocalCloud(CloudProvider):
    name = "local"
    poll_interval = 0.2
    tools = ("losetup",)
    device_rules = ("loop backing file",)

    @classmethod
    def from_config(cls, config: Config) -> LocalCloud:
        return cls(config.cloud)

    def __init__(self, settings: CloudSettings, runner: Runner | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.root = Path(settings.state_dir)
        self.volume_dir = self.root / "volumes"
        self.snapshot_dir = self.root / "snapshots"
        self.meta_path = self.root / "volumes.json"
        self.runner = runner or Runner()
        self._identity = local_identity(settings)

    # -- storage ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the state lock; yield the metadata, written back atomically on success."""
        self.volume_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.root / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                meta = self._read()
                before = json.dumps(meta, sort_keys=True)
                yield meta
                if json.dumps(meta, sort_keys=True) != before:
                    self._write(meta)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.meta_path.read_text())
        except FileNotFoundError:
            return {"volumes": {}, "snapshots": {}}
        except (OSError, ValueError) as exc:
            raise CloudError("local", f"cannot read {self.meta_path}: {exc}") from None
        data.setdefault("volumes", {})
        data.setdefault("snapshots", {})
        return data

    def _write(self, meta: dict[str, Any]) -> None:
        tmp = self.meta_path.with_name(f".{self.meta_path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump(meta, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.meta_path)
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def image_path(self, volume_id: str) -> Path:
        return self.volume_dir / f"{volume_id}.img"

    def snapshot_path(self, snapshot_id: str) -> Path:
        return self.snapshot_dir / f"{snapshot_id}.img"

    def _ensure_image(self, volume_id: str, size_gib: int, source: Path | None = None) -> None:
        """Create the sparse file if it is missing (idempotent; heals a crash after the metadata write): empty, or
        a copy of ``source`` (a snapshot's file) made as big as the volume."""
        path = self.image_path(volume_id)
        if path.exists():
            return
        tmp = path.with_name(f".{path.name}.tmp")
        if source is not None and source.exists():
            self._copy(source, tmp)  # overwrites a leftover of a copy interrupted before
        else:
            tmp.unlink(missing_ok=True)
        with open(tmp, "ab") as fh:
            fh.truncate(max(size_gib * GIB, os.fstat(fh.fileno()).st_size))
        os.replace(tmp, path)

    def _copy(self, source: Path, target: Path) -> None:
        """A copy that shares blocks where the filesystem can (reflink), else keeps holes (sparse)."""
        self.runner.run(["cp", "--reflink=auto", "--sparse=always", str(source), str(target)], timeout=3600)

    def _sweep_orphans(self, meta: dict[str, Any], loops: dict[str, list[str]]) -> None:
        """Remove image files whose volume was deleted (left by a crash mid-delete)."""
        for image in self.volume_dir.glob("vol-*.img"):
            if image.stem not in meta["volumes"] and not loops.get(str(image.resolve())):
                log.info("removing leftover image of a deleted volume", file=str(image))
                image.unlink(missing_ok=True)

    def loop_devices(self) -> dict[str, list[str]]:
        """Backing file → loop devices, read from the kernel."""
        out = self.runner.run(["losetup", "--json", "--list"], timeout=30, quiet=True).stdout
        mapping: dict[str, list[str]] = {}
        if not out.strip():
            return mapping
        for dev in json.loads(out).get("loopdevices", []):
            back = (dev.get("back-file") or "").removesuffix(" (deleted)")
            if back:
                mapping.setdefault(os.path.realpath(back), []).append(dev["name"])
        return mapping

    def _volume(self, volume_id: str, entry: dict[str, Any], loops: dict[str, list[str]]) -> Volume:
        path = str(self.image_path(volume_id).resolve())
        attached = bool(loops.get(path))
        attachments = (
            (Attachment(self._identity.instance_id, entry.get("device") or "", "attached"),) if attached else ()
        )
        return Volume(
            id=volume_id,
            size_gib=int(entry["size_gib"]),
            state=IN_USE if attached else AVAILABLE,
            volume_type=entry.get("volume_type", "gp2"),
            zone=entry.get("zone", self._identity.availability_zone),
            tags=dict(entry.get("tags", {})),
            attachments=attachments,
            iops=entry.get("iops"),
            create_time=entry.get("create_time"),
            backing_file=path,
        )

    # -- interface -----------------------------------------------------------------------------

    def identity(self) -> Identity:
        return self._identity

    def list_volumes(self) -> list[Volume]:
        loops = self.loop_devices()
        with self._locked() as meta:
            for vid, entry in meta["volumes"].items():
                snap = entry.get("snapshot_id")
                self._ensure_image(vid, int(entry["size_gib"]), self.snapshot_path(snap) if snap else None)
            self._sweep_orphans(meta, loops)
            return [
                self._volume(vid, entry, loops)
                for vid, entry in sorted(meta["volumes"].items())
                if DRIVE_TAG in entry.get("tags", {})
            ]

    def get_volume(self, volume_id: str) -> Volume | None:
        loops = self.loop_devices()
        with self._locked() as meta:
            entry = meta["volumes"].get(volume_id)
            return None if entry is None else self._volume(volume_id, entry, loops)

    def create_volume(self, drive: str, size_gib: int, volume_type: str,
                      options: VolumeOptions = VolumeOptions()) -> Volume:
        volume_id = f"vol-{secrets.token_hex(4)}"
        with self._locked() as meta:
            # Metadata (with the tag) first, then the file: a crash in between leaves a tagged
            # volume whose file is created on the next list, never an untagged orphan.
            source = None
            if options.snapshot_id is not None:
                snap = meta["snapshots"].get(options.snapshot_id)
                if snap is None:
                    raise CloudError("CreateVolume", f"snapshot {options.snapshot_id} does not exist")
                if size_gib < int(snap["size_gib"]):
                    raise CloudError("CreateVolume", f"{size_gib} GiB is smaller than snapshot "
                                     f"{options.snapshot_id} ({snap['size_gib']} GiB)")
                source = self.snapshot_path(options.snapshot_id)
            meta["volumes"][volume_id] = {
                "snapshot_id": options.snapshot_id,
                "size_gib": size_gib,
                "volume_type": volume_type,
                "iops": options.iops,
                "tags": {**options.tags, DRIVE_TAG: drive},
                "zone": self._identity.availability_zone,
                "create_time": time.time(),
                "device": None,
            }
            self._write(meta)
            self._ensure_image(volume_id, size_gib, source)
            entry = dict(meta["volumes"][volume_id])
        log.info("volume created", volume=volume_id, drive=drive, size_gib=size_gib, type=volume_type)
        return self._volume(volume_id, entry, {})

    def set_tag(self, volume_id: str, key: str, value: str) -> None:
        with self._locked() as meta:
            entry = meta["volumes"].get(volume_id)
            if entry is None:
                raise VolumeStateError(volume_id, "deleted", " (it no longer exists)")
            entry.setdefault("tags", {})[key] = value

    def attach_volume(self, volume_id: str) -> str:
        loops = self.loop_devices()
        with self._locked() as meta:
            entry = meta["volumes"].get(volume_id)
            if entry is None:
                raise VolumeStateError(volume_id, "deleted", " (it no longer exists)")
            path = str(self.image_path(volume_id).resolve())
            if loops.get(path):
                return entry.get("device") or ""
            taken = [e.get("device") or "" for v, e in meta["volumes"].items()
                     if v != volume_id and loops.get(str(self.image_path(v).resolve()))]
            try:
                device = choose_device_name(taken)
            except AttachmentLimitError as exc:
                exc.volume_id = volume_id
                raise
            entry["device"] = device
            self._ensure_image(volume_id, int(entry["size_gib"]))
            self.runner.run(["losetup", "--find", "--show", "--nooverlap", path], timeout=60)
        log.info("volume attached", volume=volume_id, device=device)
        return device

    def detach_volume(self, volume_id: str) -> None:
        loops = self.loop_devices()
        path = str(self.image_path(volume_id).resolve())
        with self._locked():
            for dev in loops.get(path, []):
                name = os.path.basename(dev)
                holders = Path(f"/sys/block/{name}/holders")
                if holders.is_dir() and any(holders.iterdir()):
                    raise CloudError("DetachVolume", f"{dev} is still in use by "
                                     f"{', '.join(p.name for p in holders.iterdir())}",
                                     volume_id=volume_id, temporary=True)
                if _is_mounted(dev):
                    raise CloudError("DetachVolume", f"{dev} is still mounted", volume_id=volume_id,
                                     temporary=True)
                self.runner.run(["losetup", "--detach", dev], timeout=60)
                log.info("volume detached", volume=volume_id, device=dev)

    # -- snapshots ---------------------------------------------------------------------------------

    def create_snapshot(self, volume_id: str, description: str, tags: Mapping[str, str]) -> Snapshot:
        """A copy of the volume's file, made now (the call returns once it is complete: a reflink is instant, a
        sparse copy reads the volume's data)."""
        snapshot_id = f"snap-{secrets.token_hex(4)}"
        with self._locked() as meta:
            if volume_id not in meta["volumes"]:
                raise VolumeStateError(volume_id, "deleted", " (it no longer exists)")
            self.snapshot_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The copy outside the lock: snapshots of several volumes are copied side by side (a leftover .tmp of a copy
        # interrupted is no snapshot: nothing refers to it).
        path = self.snapshot_path(snapshot_id)
        tmp = path.with_name(f".{path.name}.tmp")
        self._copy(self.image_path(volume_id), tmp)
        os.replace(tmp, path)
        with self._locked() as meta:
            entry = meta["volumes"].get(volume_id)
            if entry is None:
                path.unlink(missing_ok=True)
                raise VolumeStateError(volume_id, "deleted", " (it was deleted during its snapshot)")
            meta["snapshots"][snapshot_id] = {"volume_id": volume_id, "size_gib": int(entry["size_gib"]),
                                              "tags": dict(tags), "description": description,
                                              "start_time": time.time(), "state": COMPLETED}
            snap = dict(meta["snapshots"][snapshot_id])
        log.info("snapshot made", snapshot=snapshot_id, volume=volume_id)
        return self._snapshot(snapshot_id, snap)

    def _snapshot(self, snapshot_id: str, entry: dict[str, Any]) -> Snapshot:
        return Snapshot(id=snapshot_id, volume_id=entry["volume_id"], size_gib=int(entry["size_gib"]),
                        state=entry.get("state", COMPLETED), tags=dict(entry.get("tags", {})),
                        start_time=entry.get("start_time"), progress="100%",
                        backing_file=str(self.snapshot_path(snapshot_id)))

    def list_snapshots(self) -> list[Snapshot]:
        with self._locked() as meta:
            return [self._snapshot(sid, entry) for sid, entry in sorted(meta["snapshots"].items())
                    if SNAPSHOT_SET_TAG in entry.get("tags", {})]

    def set_snapshot_tag(self, snapshot_id: str, key: str, value: str) -> None:
        with self._locked() as meta:
            entry = meta["snapshots"].get(snapshot_id)
            if entry is None:
                raise CloudError("CreateTags", f"snapshot {snapshot_id} does not exist")
            entry.setdefault("tags", {})[key] = value

    def delete_snapshot(self, snapshot_id: str) -> None:
        with self._locked() as meta:
            if meta["snapshots"].pop(snapshot_id, None) is None:
                return
            self._write(meta)
            self.snapshot_path(snapshot_id).unlink(missing_ok=True)
        log.info("snapshot deleted", snapshot=snapshot_id)

    def delete_volume(self, volume_id: str) -> None:
        loops = self.loop_devices()
        path = self.image_path(volume_id)
        with self._locked() as meta:
            if volume_id not in meta["volumes"]:
                return
            if loops.get(str(path.resolve())):
                raise VolumeStateError(volume_id, IN_USE, " (still attached; detach it first)")
            # Metadata first, then the file: a crash in between leaves an image no entry refers
            # to, which the next list sweeps away (nothing can be attached from it).
            del meta["volumes"][volume_id]
            self._write(meta)
            path.unlink(missing_ok=True)
        log.info("volume deleted", volume=volume_id)


def _is_mounted(device: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as fh:
            return any(line.split(" - ", 1)[-1].split()[1:2] == [device] for line in fh)
    except OSError:
        return False
