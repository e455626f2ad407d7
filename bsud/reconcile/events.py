"""What happened to a drive that an operator wants to hear of: scale-ups, scale-downs, blocks and recoveries, and
exports that cannot be applied (and then are).

The engine feeds an :class:`EventTracker` with its steps (the plan it acts on, what the action did, a failure, a
grow timed to the capacity being usable); the tracker turns them into :class:`Event` values. The engine logs each
as one structured line and hands it to its listeners (metrics, the ``daemon.on-event`` command). Pure: no I/O; the
caller passes the clock.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from bsud.reconcile.model import Blocked, CreateVolume, Direction, DriveObs, MarkVolume, Phase, Plan, RetireVolume

SCALE_UP, SCALE_DOWN, BLOCKED, RECOVERED, EXPORT = "scale-up", "scale-down", "blocked", "recovered", "export"
STARTED, DONE, FAILED, ABANDONED = "started", "done", "failed", "abandoned"
#: An export event's results: applying the drive's exports failed (the drive serves on, it is tried again), and
#: they are applied again after that.
EXPORT_FAILED, EXPORT_RECOVERED = FAILED, "recovered"
DIRECTIONS = {SCALE_UP: Direction.UP, SCALE_DOWN: Direction.DOWN}
#: The scale event a plan's direction starts or goes on with.
SCALE_KINDS = {direction: kind for kind, direction in DIRECTIONS.items()}
#: The phases a scale event's steps run in (a scale-up creates, attaches, joins and grows).
SCALING_PHASES = frozenset({Phase.SCALING_UP, Phase.SCALING_DOWN, Phase.CREATING, Phase.ATTACHING, Phase.GROWING})


@dataclass(frozen=True)
class Event:
    kind: str                        # scale-up, scale-down, blocked, recovered, export
    drive: str
    result: str = ""                 # scale events: started, done, failed, abandoned; export: failed, recovered
    action: str = ""                 # the action that made the event
    export: str = ""                 # export events: the exports concerned, by name ("nvmeof:<nqn>", ", "-joined)
    volume: str = ""                 # the volume added or removed (an id; never a metric label)
    volume_gib: int | None = None    # its size
    drive_gib: int | None = None     # the drive's volumes together when the event happened
    duration: float | None = None    # done/failed: seconds since the scale event started (up: until usable)
    reason: str = ""
    time: float = field(default_factory=time.time)

    @property
    def direction(self) -> Direction | None:
        return DIRECTIONS.get(self.kind)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}

    def environment(self) -> dict[str, str]:
        """The event as ``BSUD_*`` environment variables, for the on-event command."""
        values = {
            "BSUD_EVENT": self.kind, "BSUD_DRIVE": self.drive, "BSUD_RESULT": self.result,
            "BSUD_ACTION": self.action, "BSUD_EXPORT": self.export, "BSUD_VOLUME": self.volume,
            "BSUD_VOLUME_GIB": "" if self.volume_gib is None else str(self.volume_gib),
            "BSUD_DRIVE_GIB": "" if self.drive_gib is None else str(self.drive_gib),
            "BSUD_DURATION_SECONDS": "" if self.duration is None else f"{self.duration:.1f}",
            "BSUD_REASON": self.reason,
            "BSUD_TIME": datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="seconds"),
        }
        return {k: v for k, v in values.items() if v != ""}


@dataclass
class _Episode:
    kind: str
    started: float
    volume: str = ""
    volume_gib: int | None = None


class EventTracker:
    """One drive's episodes (a scale event runs over several steps; a block holds until a plan is not blocked; a
    failing export until the exports are applied)."""

    def __init__(self, drive: str) -> None:
        self.drive = drive
        self.scaling: _Episode | None = None
        self.blocked = False
        #: The exports that failed to apply (by name) while they still do; None while nothing fails.
        self.exports_failing: tuple[str, ...] | None = None

    def _event(self, kind: str, obs: DriveObs | None, **facts: Any) -> Event:
        return Event(kind, self.drive, drive_gib=obs.size_gib if obs is not None else None, **facts)

    def planned(self, plan: Plan, obs: DriveObs) -> list[Event]:
        """A step's plan: entering or leaving a block."""
        action = plan.action
        if isinstance(action, Blocked):
            if self.blocked:
                return []
            self.blocked = True
            return [self._event(BLOCKED, obs, action=action.kind, reason=action.reason)]
        if self.blocked:
            self.blocked = False
            return [self._event(RECOVERED, obs, action=action.kind, reason=action.reason)]
        return []

    def executing(self, plan: Plan, obs: DriveObs, now: float) -> list[Event]:
        """An action about to run: the first of a scale event starts it."""
        action = plan.action
        kind = SCALE_KINDS.get(plan.direction) if plan.direction is not None else None
        if kind is None or (self.scaling is not None and self.scaling.kind == kind):
            return []
        if kind == SCALE_UP and not isinstance(action, CreateVolume):
            return []
        episode = _Episode(kind, now, getattr(action, "volume_id", "") or "",
                           action.size_gib if isinstance(action, CreateVolume) else None)
        self.scaling = episode
        return [self._event(kind, obs, result=STARTED, action=action.kind, volume=episode.volume,
                            volume_gib=episode.volume_gib, reason=action.reason)]

    def executed(self, plan: Plan, obs: DriveObs, now: float, created: str | None = None) -> list[Event]:
        """An action that completed: a scale-down ends when its volume is retired (or its removal abandoned)."""
        action, episode = plan.action, self.scaling
        if episode is None:
            return []
        if episode.kind == SCALE_UP and isinstance(action, CreateVolume) and created:
            episode.volume = created
            return []
        if episode.kind != SCALE_DOWN:
            return []
        if isinstance(action, RetireVolume):
            result = DONE
        elif isinstance(action, MarkVolume) and action.value == "":
            result = ABANDONED
        else:
            return []
        self.scaling = None
        return [self._event(SCALE_DOWN, obs, result=result, action=action.kind, volume=action.volume_id,
                            duration=round(now - episode.started, 2), reason=action.reason)]

    def grew(self, took: float, obs: DriveObs) -> list[Event]:
        """The capacity rose after a scale-up: it is usable now, ``took`` seconds after the decision."""
        episode = self.scaling
        if episode is None or episode.kind != SCALE_UP:
            return []
        self.scaling = None
        return [self._event(SCALE_UP, obs, result=DONE, volume=episode.volume, volume_gib=episode.volume_gib,
                            duration=round(took, 2), reason="the new capacity is usable")]

    def failed(self, plan: Plan | None, obs: DriveObs | None, error: str, now: float) -> list[Event]:
        """A step of a scale event failed (it is retried: the event stays open)."""
        episode = self.scaling
        if episode is None or plan is None or plan.phase not in SCALING_PHASES:
            return []
        return [self._event(episode.kind, obs, result=FAILED, action=plan.action.kind, volume=episode.volume,
                            volume_gib=episode.volume_gib, duration=round(now - episode.started, 2),
                            reason=error)]

    def exports_failed(self, obs: DriveObs | None, error: str, exports: tuple[str, ...]) -> list[Event]:
        """Applying the drive's exports failed (retried later): said once until they are applied, like a block."""
        if self.exports_failing is not None:
            return []
        self.exports_failing = exports
        return [self._event(EXPORT, obs, result=EXPORT_FAILED, action="ApplyExports", export=", ".join(exports),
                            reason=error)]

    def exports_applied(self, obs: DriveObs | None) -> list[Event]:
        """The drive's exports are applied as configured: the end of a failure, if one was said."""
        if self.exports_failing is None:
            return []
        exports, self.exports_failing = self.exports_failing, None
        return [self._event(EXPORT, obs, result=EXPORT_RECOVERED, action="ApplyExports", export=", ".join(exports),
                            reason="the exports are applied as configured")]
