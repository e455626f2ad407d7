"""What a drive's step reports: one :class:`DriveStatus` per drive, kept up to date by the engine.

The daemon hands the reports of all drives to its sinks (status file, sd_notify — see ``bsud.sinks``); the CLI
builds the same report from one observation when no daemon runs. Nothing here does I/O.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bsud.logs import get_logger
from bsud.reconcile.model import DriveObs, Pace, Plan, UsageObs
from bsud.reconcile.trigger import time_to_full

log = get_logger("bsud.reconcile")


@dataclass
class DriveStatus:
    name: str
    target: str
    layout: str
    mount_path: str
    phase: str = "starting"
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
    volumes: list[dict[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    last_error: str | None = None
    outcome: str | None = None               # what the last action executed did (changed / unchanged / preempted)
    errors: int = 0                          # steps that failed since bsud started (each retried)
    last_scale_event: dict[str, Any] | None = None  # the last scale-up/scale-down event (started, done, …)
    #: wanted, names, in_sync, servers, detail; once applying them failed: error, failing (export names), attempts,
    #: retry_at (epoch seconds of the next attempt)
    exports: dict[str, Any] = field(default_factory=dict)
    mounted: bool = False                    # on its mount path, as the last observation saw it
    updated: float = 0.0                     # when a step last observed the drive without error (record);
                                             # 0 until one did (metric bsud_drive_last_observed_timestamp_seconds)

    def line(self) -> str:
        used = f"{self.used_percent:.1f}%" if self.used_percent is not None else "-"
        text = f"{self.name}: {self.phase} ({len(self.volumes)} volumes, {self.size_gib} GiB, used {used})"
        if self.seconds_to_full is not None:
            text += f" writing {self.write_rate / 1e6:.1f} MB/s, full in {self.seconds_to_full:.0f} s"
        if self.last_error:
            text += f" error: {self.last_error}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

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
        e = obs.exports
        self.exports = {"wanted": e.wanted, "names": list(e.names), "in_sync": e.in_sync, "servers": list(e.servers),
                        "detail": e.detail, **({"stats": {name: dict(counters) for name, counters in e.stats}}
                                               if e.stats else {}),
                        **({"clients": {address: dict(counters) for address, counters in e.clients}}
                           if e.clients else {}),
                        **({"error": e.error, "failing": list(e.failing), "attempts": e.attempts,
                            "retry_at": e.retry_at} if e.error else {})} if e.wanted or e.present else {}
        self.record_usage(obs.usage, obs.pace)
        self.volumes = [{"id": v.id, "size_gib": v.size_gib, "state": v.state, "device": v.device,
                         "member": v.member, **({"bookkeeping": v.bookkeeping} if v.bookkeeping else {}),
                         **({"live_bytes": v.live_bytes} if v.live_bytes is not None else {})}
                        for v in obs.volumes]
        self.updated = time.time()

    def record_usage(self, usage: UsageObs | None, pace: Pace) -> None:
        self.used_percent = round(usage.used_percent, 2) if usage else None
        self.size_bytes, self.used_bytes = (usage.size, usage.used) if usage else (None, None)
        self.metadata_used_percent = round(usage.metadata_percent, 2) if usage else None
        self.write_rate = round(pace.write_rate)
        left = time_to_full(usage, pace) if usage else math.inf
        self.seconds_to_full = None if math.isinf(left) else round(left, 1)
        self.grow_seconds = round(pace.grow_seconds, 2)
