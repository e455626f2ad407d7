"""Observing a drive: its volumes from the cloud's tags, its storage from the host.

Nothing is cached across steps except the cloud listing, which :class:`CloudSnapshot`
shares between drives (one DescribeVolumes for all) and drops as soon as any drive
changes something in the cloud.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import replace

from bsud.cloud.base import CloudProvider, Volume, volumes_by_drive
from bsud.config import DriveConfig
from bsud.config.mount_options import missing as missing_options
from bsud.errors import BsudError
from bsud.host import mounts
from bsud.exports import ExportKind, ExportState, export_name
from bsud.host.devices import DeviceMismatch, Resolution, VolumeRef, block_devices, resolve_device
from bsud.host.layouts import LayoutState, StorageLayout
from bsud.host.safety import probe
from bsud.host.space import Space
from bsud.logs import get_logger
from bsud.naming import RESTORED_FROM_TAG, STATE_TAG
from bsud.reconcile.model import DriveObs, ExportsObs, PeerObs, PeerVolume, UsageObs, VolumeObs

log = get_logger("bsud.reconcile.observe")


class CloudSnapshot:
    """The tagged volumes of every drive, read in one call and shared; refreshed when stale or dirty.

    One listing at a time (a drive asking while another reads waits for that answer). What was last read is
    available without waiting (:meth:`cached`): the daemon's main loop, which reports status and pings systemd's
    watchdog, must never wait on a cloud that does not answer.
    """

    def __init__(self, cloud: CloudProvider, max_age: float = 60.0, jitter: float = 0.0) -> None:
        self.cloud = cloud
        self.max_age = max_age
        #: Each listing is kept for ``max_age`` × a random factor in 1 ± ``jitter``: VMs of a fleet started together
        #: do not list the cloud in step.
        self.jitter = jitter
        self._keep = max_age
        self._fetch = threading.Lock()
        self._volumes: list[Volume] | None = None
        self._stamp = 0.0
        self._generation = 0
        self.calls = 0

    def invalidate(self) -> None:
        """Something changed: the next reader lists again (never waits, even while a listing is under way)."""
        self._generation += 1
        self._volumes = None

    def volumes(self, max_age: float | None = None) -> list[Volume]:
        age = self._keep if max_age is None else max_age
        with self._fetch:
            volumes = self._volumes
            if volumes is None or time.monotonic() - self._stamp > age:
                generation = self._generation
                volumes = self.cloud.list_volumes()
                self.calls += 1
                if generation == self._generation:  # else invalidated meanwhile: it may predate the change
                    self._volumes, self._stamp = volumes, time.monotonic()
                    self._keep = self.max_age * random.uniform(1 - self.jitter, 1 + self.jitter)
            return list(volumes)

    def by_drive(self, max_age: float | None = None) -> dict[str, list[Volume]]:
        return volumes_by_drive(self.volumes(max_age))

    def cached(self) -> dict[str, list[Volume]] | None:
        """The last listing by drive, without calling the cloud (None when there is none)."""
        volumes = self._volumes
        return None if volumes is None else volumes_by_drive(list(volumes))


def usage_obs(space: Space) -> UsageObs:
    """The planner's view of a drive's live space."""
    return UsageObs(used=space.data.used, free=space.data_free, size=space.size,
                    metadata_used=space.metadata.used, metadata_free=space.metadata_free)


def resolve_attached(volume: Volume, instance_id: str, devices: list[dict],
                     rules: tuple[str, ...]) -> tuple[Resolution | None, str | None]:
    """The verified device of an attached volume by the provider's identity ``rules``, or the refusal message."""
    try:
        return resolve_device(VolumeRef.from_volume(volume, instance_id), devices, rules), None
    except DeviceMismatch as exc:
        return None, str(exc)


def observe_exports(spec: DriveConfig, exporters: Mapping[str, ExportKind]) -> ExportsObs:
    """The drive's exports of every kind as the system has them (a kind it no longer uses may still be there)."""
    states = []
    stats: dict[str, dict[str, int]] = {}
    clients: dict[str, dict[str, int]] = {}
    for kind, exporter in exporters.items():
        wanted = spec.exports_by(kind)
        try:
            states.append(exporter.observe(spec.name, spec.mount_path, wanted))
            if wanted and states[-1].present:
                stats.update(exporter.stats(spec.name, wanted))
                clients.update(exporter.clients())
        except BsudError as exc:
            states.append(ExportState(kind, len(wanted), applied=False, present=True, server="unknown",
                                      detail=f"cannot read the {kind} exports: {exc}"))
    return ExportsObs(
        wanted=len(spec.exports), in_sync=all(s.applied for s in states), present=any(s.present for s in states),
        detail="; ".join(s.detail for s in states if s.detail),
        servers=tuple(f"{s.kind}: {s.server}" for s in states if s.wanted),
        names=tuple(export_name(e) for e in spec.exports),
        stats=tuple((name, tuple(counters.items())) for name, counters in stats.items()),
        clients=tuple((address, tuple(counters.items())) for address, counters in clients.items()),
    )


def observe_drive(spec: DriveConfig, volumes: list[Volume], cloud: CloudProvider, layout: StorageLayout,
                  exporters: Mapping[str, ExportKind] | None = None,
                  peer_volumes: list[Volume] | None = None) -> tuple[DriveObs, dict[str, Resolution]]:
    """Everything the planner needs to know about one drive, read now: each read command runs once (the
    filesystem's ``show``, the VG report are asked for by several pieces). ``peer_volumes``: a highly available
    drive's peer's drive, as listed."""
    with layout.runner.reading():
        obs, resolutions = _observe_drive(spec, volumes, cloud, layout, exporters if spec.ha is None else None)
    if spec.ha is not None and spec.ha.peer_drive:
        obs = replace(obs, peer=observe_peer(spec.ha.peer_drive, peer_volumes or [], spec.ha.peer_instance,
                                             cloud.identity().instance_id))
    return obs, resolutions


def observe_peer(drive: str, volumes: list[Volume], instance: str | None, me: str) -> PeerObs:
    """The peer's drive: its volumes, and its VM (the config's, else the one its volumes are attached to — never
    this one)."""
    found = [PeerVolume(id=v.id, size_gib=v.size_gib, state=v.state, bookkeeping=v.tags.get(STATE_TAG) or None,
                        attached_to=next((a.instance_id for a in v.attachments if a.state != "detached"), None))
             for v in volumes]
    if instance is None:
        seen = {v.attached_to for v in found if v.attached_to and v.attached_to != me}
        instance = seen.pop() if len(seen) == 1 else None
    return PeerObs(drive=drive, volumes=tuple(found), instance=instance)


def _observe_drive(spec: DriveConfig, volumes: list[Volume], cloud: CloudProvider, layout: StorageLayout,
                   exporters: Mapping[str, ExportKind] | None) -> tuple[DriveObs, dict[str, Resolution]]:
    me = cloud.identity().instance_id
    devices = block_devices()
    resolutions: dict[str, Resolution] = {}
    errors: dict[str, str] = {}
    for vol in volumes:
        if vol.attachment_to(me) is not None:
            found, error = resolve_attached(vol, me, devices, cloud.device_rules)
            if found is not None:
                resolutions[vol.id] = found
            elif error:
                errors[vol.id] = error
    paths = [r.device for r in resolutions.values()]
    state = layout.observe(paths)
    mounted, read_only, mount_blocked = _observe_mount(spec, layout, paths, state)
    options_missing: tuple[str, ...] = ()
    if mounted and not read_only and spec.mount_options and spec.ha is None:  # an ha drive: the gateway mounts it
        entry = mounts.mount_at(spec.mount_path)
        if entry is not None:
            options_missing = tuple(missing_options(spec.mount_options, entry.options, entry.super_options))
    obs_volumes = [_observe_volume(spec, layout, vol, me, resolutions.get(vol.id), errors.get(vol.id), state)
                   for vol in volumes]
    usage = None
    can_grow = False
    if mounted:
        usage = usage_obs(layout.usage(spec.mount_path))
        can_grow = layout.can_grow(spec.mount_path)
        if spec.ha is None:  # a volume never leaves a highly available drive: no removal to choose
            obs_volumes = with_live_data(spec, layout, obs_volumes, usage)
    elif state.replication is not None and state.active:
        can_grow = layout.can_grow(spec.mount_path)  # either node's LV takes its VG's new space
    obs = DriveObs(
        name=spec.name, volumes=tuple(obs_volumes), storage=state, mounted=mounted, mount_blocked=mount_blocked,
        active=layout.drive_active(state, mounted), can_grow=can_grow, usage=usage, read_only=read_only,
        options_missing=options_missing,
        exports=observe_exports(spec, exporters) if exporters else ExportsObs(),
    )
    return obs, resolutions


def _observe_mount(spec: DriveConfig, layout: StorageLayout, paths: list[str],
                   state: LayoutState) -> tuple[bool, bool, str | None]:
    """Whether the drive is mounted on its path (and forced read-only), or what holds the path instead."""
    entry = mounts.mount_at(spec.mount_path)
    if entry is not None:
        if layout.is_our_mount(entry, paths):
            return True, mounts.forced_read_only(entry), None
        return False, False, (f"{spec.mount_path} holds a {entry.fstype} filesystem from {entry.source} that is not "
                              f"drive {spec.name!r}'s; unmount it or change mount-path")
    if state.replication is not None:
        return False, False, None  # the gateway mounts a highly available drive, not bsud
    if state.has_filesystem and os.path.isdir(spec.mount_path) and any(os.scandir(spec.mount_path)):
        return False, False, (f"{spec.mount_path} is not empty; bsud mounts only on an empty directory "
                              "(move its content away or change mount-path)")
    return False, False, None


def _observe_volume(spec: DriveConfig, layout: StorageLayout, vol: Volume, me: str, res: Resolution | None,
                    error: str | None, state: LayoutState) -> VolumeObs:
    """One tagged volume: where it is attached, its device, and — when it is not a member — what the gate finds."""
    attached = vol.attachment_to(me)
    elsewhere = vol.attached_elsewhere(me)
    member = bool(res and res.device in state.members)
    blank = own = False
    foreign = None
    if res is not None and not member:
        try:
            found = probe(layout.runner, res.device)
        except BsudError:
            found = None
        if found is not None:
            blank = found.blank
            if not blank and layout.is_own(found):
                own = True  # e.g. a PV made before a crash, not yet in the VG: Join finishes it
            elif not blank:
                foreign = (f"{res.device} (volume {vol.id}) holds {found.describe()}, which is not drive "
                           f"{spec.name!r}'s; bsud will not touch it. Wipe it yourself if the data is not "
                           "needed, or detach the volume and remove its tag")
    return VolumeObs(
        id=vol.id, size_gib=vol.size_gib, state=vol.state, bookkeeping=vol.tags.get(STATE_TAG) or None,
        attached_here=attached is not None, attached_elsewhere=elsewhere.instance_id if elsewhere else None,
        device=res.device if res else None, device_error=error, member=member, blank=blank, own=own,
        foreign=foreign, restored_from=vol.tags.get(RESTORED_FROM_TAG) or None,
    )


def with_live_data(spec: DriveConfig, layout: StorageLayout, volumes: list[VolumeObs],
                   usage: UsageObs) -> list[VolumeObs]:
    """The members with the drive's live data on each, read only when the planner may choose one to remove (two or
    more members, used at or under ``min-used-space-perc``): the chunk map costs an ioctl per chunk."""
    members = [v for v in volumes if v.member and v.device]
    if len(members) < 2 or usage.used_percent > spec.min_used_space_perc:
        return volumes
    try:
        live = layout.live_bytes(spec.mount_path, [v.device for v in members if v.device])
    except BsudError as exc:
        log.warning("cannot read the data per volume; choosing by size", drive=spec.name, error=str(exc))
        return volumes
    if live is None:
        return volumes
    return [replace(v, live_bytes=live.get(os.path.realpath(v.device))) if v.member and v.device else v
            for v in volumes]


def unmanaged_drives(by_drive: dict[str, list[Volume]], managed: set[str], instance_id: str) -> dict[str, list[str]]:
    """Drives with volumes attached here that the config does not name (shown, left untouched)."""
    return {
        name: [v.id for v in vols]
        for name, vols in by_drive.items()
        if name not in managed and any(v.attachment_to(instance_id) for v in vols)
    }
