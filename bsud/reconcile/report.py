"""What a drive's step reports: one :class:`DriveStatus` per drive, kept up to date by the engine.

The daemon hands the reports of all drives to its sinks (status file, sd_notify, metrics — see ``bsud.sinks``);
the CLI builds the same report from one observation when no daemon runs. The report stays typed — the volumes and
exports as observed, the last scale event as the event — until a sink writes JSON (:meth:`DriveStatus.as_dict`).
Nothing here does I/O.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any

from bsud.logs import get_logger
from bsud.reconcile.events import Event
from bsud.reconcile.model import DriveObs, ExportsObs, Pace, PeerObs, Phase, Plan, UsageObs, VolumeObs
from bsud.storage import Replication
from bsud.reconcile.trigger import time_to_full

log = get_logger("bsud.reconcile")


@dataclass
class DriveStatus:
    name: str
    target: str
    layout: str
    mount_path: str
    phase: Phase = Phase.STARTING
    action: str = ""
    reason: str = ""
    size_gib: int = 0
    used_percent: float | None = None
    size_bytes: int | None = None            # the filesystem's size (mounted), the base of used_percent
    used_bytes: int | None = None
    metadata_used_percent: float | None = None
    write_rate: float = 0.0                  # bytes/s, live
    seconds_to_full: float | None = None     # at write_rate; None when nothing is written
    grow_seconds: float = 0.0                # what a grow takes (learned, else the provider's default)
    volumes: tuple[VolumeObs, ...] = ()
    notes: list[str] = field(default_factory=list)
    last_error: str | None = None
    outcome: str | None = None               # what the last action executed did (changed / unchanged / preempted)
    errors: int = 0                          # steps that failed since bsud started (each retried)
    last_scale_event: Event | None = None   # the last scale-up/scale-down event (started, done, …)
    #: The drive's exports as observed, with the engine's memory of a failure to apply them; None when it has
    #: none (none wanted, none present)
    exports: ExportsObs | None = None
    mounted: bool = False                    # on its mount path, as the last observation saw it
    mount_options: tuple[str, ...] = ()      # its mount-options, as the config gives them
    #: Those the mounted filesystem does not show in effect (a remount is planned, or failed: last_error)
    mount_options_missing: tuple[str, ...] = ()
    #: A highly available drive: its DRBD resource on this node and the peer's drive (None for any other drive).
    replication: Replication | None = None
    peer: PeerObs | None = None
    updated: float = 0.0                     # when a step last observed the drive without error (record);
                                             # 0 until one did (metric bsud_drive_last_observed_timestamp_seconds)

    def __post_init__(self) -> None:
        self.phase = Phase(self.phase)

    def line(self) -> str:
        used = f"{self.used_percent:.1f}%" if self.used_percent is not None else "-"
        text = f"{self.name}: {self.phase} ({len(self.volumes)} volumes, {self.size_gib} GiB, used {used})"
        if self.seconds_to_full is not None:
            text += f" writing {self.write_rate / 1e6:.1f} MB/s, full in {self.seconds_to_full:.0f} s"
        if self.last_error:
            text += f" error: {self.last_error}"
        return text

    def as_dict(self) -> dict[str, Any]:
        """The status file's form of the report (JSON types only)."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(phase=self.phase.value, mount_options=list(self.mount_options),
                    mount_options_missing=list(self.mount_options_missing),
                    volumes=[volume_dict(v) for v in self.volumes], notes=list(self.notes),
                    last_scale_event=self.last_scale_event.as_dict() if self.last_scale_event else None,
                    exports=exports_dict(self.exports) if self.exports is not None else {},
                    replication=replication_dict(self.replication, self.peer) if self.replication else None)
        data.pop("peer")
        return data

    def record(self, obs: DriveObs, current: Plan) -> None:
        """A step's observation and plan. A note is logged once while it holds (a seconds-to-full note changes,
        so it is said again)."""
        self.phase, self.action, self.reason = current.phase, current.action.kind, current.action.reason
        for note in current.notes:
            if note not in self.notes:
                log.warning("drive note", drive=self.name, note=note)
        self.notes = list(current.notes)
        self.size_gib = obs.size_gib
        self.mounted = obs.mounted
        self.mount_options_missing = obs.options_missing
        self.exports = obs.exports if obs.exports.wanted or obs.exports.present else None
        self.record_usage(obs.usage, obs.pace)
        self.volumes = obs.volumes
        self.replication, self.peer = obs.storage.replication, obs.peer
        self.updated = time.time()

    def record_usage(self, usage: UsageObs | None, pace: Pace) -> None:
        self.used_percent = round(usage.used_percent, 2) if usage else None
        self.size_bytes, self.used_bytes = (usage.size, usage.used) if usage else (None, None)
        self.metadata_used_percent = round(usage.metadata_percent, 2) if usage else None
        self.write_rate = round(pace.write_rate)
        left = time_to_full(usage, pace) if usage else math.inf
        self.seconds_to_full = None if math.isinf(left) else round(left, 1)
        self.grow_seconds = round(pace.grow_seconds, 2)


def volume_dict(v: VolumeObs) -> dict[str, Any]:
    """A volume as the status file shows it."""
    return {"id": v.id, "size_gib": v.size_gib, "state": v.state, "device": v.device, "member": v.member,
            **({"bookkeeping": v.bookkeeping} if v.bookkeeping else {}),
            **({"live_bytes": v.live_bytes} if v.live_bytes is not None else {})}


def replication_dict(r: Replication, peer: PeerObs | None) -> dict[str, Any]:
    """A highly available drive's DRBD resource as the status file shows it: role, connection, disks, the device's
    size (what both nodes agreed on: the coordinated size), this node's LV, the peer's drive in the cloud."""
    return {"resource": r.resource, "device": r.device, "configured": r.configured, "up": r.up, "role": r.role,
            "peer_role": r.peer_role,
            "connection": r.connection, "disk": r.disk, "peer_disk": r.peer_disk, "size_bytes": r.size,
            "backing_bytes": r.backing_size, "room_bytes": r.room, **({"error": r.error} if r.error else {}),
            **({"peer_drive": peer.drive, "peer_size_gib": peer.size_gib, "peer_instance": peer.instance}
               if peer else {})}


def exports_dict(e: ExportsObs) -> dict[str, Any]:
    """The exports as the status file shows them: wanted, names, in_sync, servers, detail, the servers' counters
    (stats by export, clients by address) when they count; once applying them failed: error, failing (export
    names), attempts, retry_at (epoch seconds of the next attempt)."""
    return {"wanted": e.wanted, "names": list(e.names), "in_sync": e.in_sync, "servers": list(e.servers),
            "detail": e.detail, **({"stats": by_name(e.stats)} if e.stats else {}),
            **({"clients": by_name(e.clients)} if e.clients else {}),
            **({"error": e.error, "failing": list(e.failing), "attempts": e.attempts, "retry_at": e.retry_at}
               if e.error else {})}


def by_name(counted: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]) -> dict[str, dict[str, int]]:
    """An observation's counters (``ExportsObs.stats`` by export, ``.clients`` by address) as mappings."""
    return {name: dict(counters) for name, counters in counted}
