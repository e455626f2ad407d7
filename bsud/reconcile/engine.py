"""One drive's reconcile step: observe → plan → execute the first action → (next step observes again)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from bsud.cloud.base import CloudProvider
from bsud.config import DaemonSettings, DriveConfig, NfsSettings, Provider, Target, volume_limits
from bsud.errors import AttachmentLimitError, BsudError
from bsud.exports import export_name, make_exporters
from bsud.exports.ganesha_server import GaneshaServer
from bsud.host.layouts import StorageLayout, make_layout
from bsud.logs import get_logger
from bsud.naming import DEFAULT_MAX_VOLUME_GIB
from bsud.reconcile.events import Event, EventTracker
from bsud.reconcile.execute import Executor
from bsud.reconcile.model import (ApplyExports, Blocked, CreateVolume, Direction, DriveObs, Idle, Outcome, Pace,
                                  Phase, Plan, RemoveFromDrive, Wait)
from bsud.reconcile.observe import CloudSnapshot, observe_drive
from bsud.reconcile.pace import DEFAULT_GROW_SECONDS, GrowClock, RateMeter, WritebackMeter, make_pace
from bsud.reconcile.planner import plan
from bsud.reconcile.report import DriveStatus
from bsud.retry import ErrorKind, backoff_seconds
from bsud.runner import Runner

log = get_logger("bsud.reconcile")

#: While part of a drive's storage is missing, the cloud listing it is planned on is at most this old: the
#: volume's state (detached, attached elsewhere, deleted) is what the planner needs to say what to do.
MISSING_LISTING_SECONDS = 5.0

#: The same action done this many times in a row, each time without error, and planned again has no effect:
#: say so and back off (it is tried again later; a drive is never parked for good).
REPEAT_LIMIT = 8
#: …or this many times in a row reporting that there was nothing to do (Outcome.UNCHANGED): the observation
#: and the action disagree, and doing it again will not help.
UNCHANGED_LIMIT = 2
#: Moving data off a volume that failed this many times without a success in between (btrfs cannot relocate its
#: chunks, pvmove keeps failing…) is given up for ``REMOVAL_HOLD_SECONDS``: the volume stays in the drive, and the
#: drive is not made to repeat that heavy I/O every few minutes. Tried again after that (never parked for good).
REMOVAL_FAILURE_LIMIT = 3
REMOVAL_HOLD_SECONDS = 3600.0
#: The VM refused to take one more volume (its limit of attached volumes): for this long nothing is created or attached
#: for the drive (it is blocked, saying what to do), then it is tried again — once, at the price of one volume created
#: and deleted if the VM is still full. A reload (after lowering max-bsu-count, say) tries again at once.
ATTACH_LIMIT_HOLD_SECONDS = 1800.0
#: Applying the exports that failed is tried again as a temporary error is (bsud.retry: after ``retry-seconds``, then
#: twice as long each time, at most 5 minutes apart), counted by the engine's own attempts; the failed step's delay
#: says it to the worker. The drive is ``online`` meanwhile: it is mounted and serves; scaling and everything else go
#: on.


@dataclass(frozen=True)
class ExportsFailure:
    """Applying the drive's exports failed (remembered in memory until they are applied)."""

    error: str
    failing: tuple[str, ...]     # the exports of the kinds that failed, by name
    attempts: int                # failed attempts in a row
    retry_at: float              # when the next attempt is due: epoch seconds (shown) …
    retry_after: float           # … and monotonic (compared)


class DriveReconciler:
    def __init__(self, spec: DriveConfig, cloud: CloudProvider, snapshot: CloudSnapshot, provider: Provider,
                 runner: Runner | None = None, settings: DaemonSettings | None = None,
                 nfs: NfsSettings | None = None, ganesha: GaneshaServer | None = None) -> None:
        self.cloud = cloud
        self.snapshot = snapshot
        self.provider = provider
        self.runner = runner or Runner()
        self.settings = settings or DaemonSettings()
        self.nfs = nfs or NfsSettings()
        #: The nfs-ganesha the daemon owns (its heartbeat, its managed process); None: the ganesha kind makes its own.
        self.ganesha = ganesha
        #: This drive's grows, timed; the write rate is fed by the daemon's sampler (None: not sampled).
        self.clock = GrowClock(self.settings.grow_seconds or DEFAULT_GROW_SECONDS[provider])
        self.meter: RateMeter | None = None
        #: What the drive's devices write, and the page cache's dirty room (fed by the sampler; None: not sampled).
        self.writeback: WritebackMeter | None = None
        self.dirty_room: int | None = None
        self.last_obs: DriveObs | None = None
        self.events = EventTracker(spec.name)
        #: Called with each event (metrics, the on-event command); a listener's failure is logged, never raised.
        self.listeners: list[Callable[[Event], None]] = []
        #: Failed attempts to move data off a volume, and the volumes left in the drive for a while after too many
        #: (until when, monotonic; why, in words). In memory only: a restarted bsud tries again at once.
        self._removal_failures: dict[str, int] = {}
        self._removal_held: dict[str, tuple[float, str]] = {}
        #: Applying the exports failed: why, and when it is tried again. In memory only (a restart tries at once).
        self.exports_failure: ExportsFailure | None = None
        #: The VM refused to take a volume: until when nothing is attached (monotonic), and the line saying so.
        self._attach_limit: tuple[float, str] | None = None
        self.update_spec(spec)

    def update_spec(self, spec: DriveConfig, settings: DaemonSettings | None = None,
                    nfs: NfsSettings | None = None) -> None:
        """Take a new spec (and daemon and nfs sections, on a reload); what was learned of the drive's pace is
        kept."""
        if nfs is not None:
            self.nfs = nfs
        if settings is not None:
            self.settings = settings
            self.clock.default_seconds = settings.grow_seconds or DEFAULT_GROW_SECONDS[self.provider]
        old: DriveConfig | None = getattr(self, "spec", None)
        if self.exports_failure is not None and old is not None and old.exports != spec.exports:
            # Other exports now: tried at once (the failure is still shown until they are applied).
            self.exports_failure = replace(self.exports_failure, attempts=0, retry_at=time.time(), retry_after=0.0)
        if self._attach_limit is not None and old is not None:
            log.info("reload: attaching volumes is tried again", drive=spec.name)
            self._attach_limit = None
        self.spec = spec
        replica = (spec.ha.drbd_resource, spec.ha.drbd_device) if spec.ha is not None else None
        self.layout: StorageLayout = make_layout(spec.layout, spec.name, self.runner, replica)
        self.exporters = make_exporters(self.runner, self.nfs, self.ganesha)
        self.executor = Executor(spec, self.cloud, self.layout, self.provider,
                                 attach_timeout=self.settings.volume_wait_seconds,
                                 device_timeout=self.settings.device_wait_seconds, exporters=self.exporters)
        limits = volume_limits(self.provider, spec.disk_type)
        self.max_volume_gib = limits.max_size if limits else DEFAULT_MAX_VOLUME_GIB
        previous: DriveStatus | None = getattr(self, "status", None)
        self.status = DriveStatus(spec.name, spec.target.value, spec.layout.value, spec.mount_path,
                                  mount_options=spec.mount_options)
        if previous is not None:  # what happened before a reload is still what happened
            self.status.errors, self.status.last_scale_event = previous.errors, previous.last_scale_event
            self.status.updated = previous.updated  # a reload does not make a drive that fails to observe look new
        self.last_plan: Plan | None = None
        self._repeats = 0
        self._unchanged = 0
        self._previous: object = None

    def pace(self) -> Pace:
        return make_pace(self.meter, self.clock, self.settings.grow_safety_factor, self.writeback, self.dirty_room)

    def observe(self, max_age: float | None = None) -> tuple[DriveObs, list[str]]:
        listing = self.snapshot.by_drive(max_age)
        peer = listing.get(self.spec.ha.peer_drive, []) if self.spec.ha and self.spec.ha.peer_drive else None
        obs, resolutions = observe_drive(self.spec, listing.get(self.spec.name, []), self.cloud, self.layout,
                                         self.exporters, peer)
        obs = replace(obs, pace=self.pace(), removal_held=self._held_removals(), attach_refused=self._attach_held())
        took = self.clock.observe(time.monotonic(), obs.usage.size if obs.usage else None)
        if took is not None:
            log.info("grow done: capacity usable", drive=self.spec.name, seconds=round(took, 2),
                     size=obs.usage.size if obs.usage else None, grow_seconds=round(self.clock.seconds, 2))
            self.emit(self.events.grew(took, obs))
        self.last_obs = obs
        return obs, [r.device for r in resolutions.values()]

    def _held_removals(self) -> tuple[tuple[str, str], ...]:
        now = time.monotonic()
        for volume in [v for v, (until, _) in self._removal_held.items() if until <= now]:
            del self._removal_held[volume]
            log.info("removal no longer held back: it may be tried again", drive=self.spec.name, volume=volume)
        return tuple((volume, why) for volume, (_, why) in sorted(self._removal_held.items()))

    def _attach_held(self) -> str | None:
        if self._attach_limit is not None and self._attach_limit[0] <= time.monotonic():
            self._attach_limit = None
            log.info("attaching volumes is tried again", drive=self.spec.name)
        return self._attach_limit[1] if self._attach_limit else None

    def _attach_refused(self, error: AttachmentLimitError, obs: DriveObs) -> None:
        """The VM takes no more volumes: hold attaching back, say when it is tried again, show the drive blocked."""
        error.retry_at = time.strftime("%H:%M UTC", time.gmtime(time.time() + ATTACH_LIMIT_HOLD_SECONDS))
        self._attach_limit = (time.monotonic() + ATTACH_LIMIT_HOLD_SECONDS, str(error))
        log.info("attaching held back: the VM takes no more volumes", drive=self.spec.name, volume=error.volume_id,
                 deleted=error.deleted, hold_seconds=ATTACH_LIMIT_HOLD_SECONDS)  # the line itself: "step failed"
        shown = self.last_obs = replace(obs, attach_refused=str(error))
        self.status.record(shown, plan(self.spec, shown, self.max_volume_gib))

    def _removal_failed(self, volume: str, error: Exception) -> None:
        failures = self._removal_failures.get(volume, 0) + 1
        self._removal_failures[volume] = failures
        if failures < REMOVAL_FAILURE_LIMIT:
            return
        del self._removal_failures[volume]
        again = time.strftime("%H:%M UTC", time.gmtime(time.time() + REMOVAL_HOLD_SECONDS))
        why = f"moving data off it failed {failures} times in a row (last: {error}); not tried again before {again}"
        self._removal_held[volume] = (time.monotonic() + REMOVAL_HOLD_SECONDS, why)
        log.error("removal failed repeatedly: the volume stays in the drive for now", drive=self.spec.name,
                  volume=volume, failures=failures, hold_seconds=REMOVAL_HOLD_SECONDS, error=str(error))

    def _remembered_exports(self, obs: DriveObs) -> DriveObs:
        """The observation with what the engine remembers of a failure to apply the exports (the planner then says
        so and waits for the attempt to be due); forgotten once they are applied, said then as an event."""
        failure = self.exports_failure
        if obs.exports.in_sync or self.spec.target != Target.ONLINE:
            self.exports_failure = None
            if obs.exports.in_sync:
                self.emit(self.events.exports_applied(obs))
            return obs
        if failure is None:
            return obs
        return replace(obs, exports=replace(obs.exports, error=failure.error, failing=failure.failing,
                                            attempts=failure.attempts, retry_at=failure.retry_at,
                                            held=time.monotonic() < failure.retry_after))

    def _exports_failed(self, error: Exception, obs: DriveObs) -> None:
        """Applying the exports failed: remember why, space the next attempt out (the failed step's delay, which the
        worker waits), say it once as an event, and show the drive as what it is: online, one export failing."""
        previous = self.exports_failure
        attempts = (previous.attempts if previous else 0) + 1
        wait = backoff_seconds(ErrorKind.TEMPORARY, attempts, self.settings.retry_seconds)
        kinds = getattr(error, "kinds", None)  # the kinds that failed (the executor's); None: all of them
        failing = tuple(export_name(e) for e in self.spec.exports if kinds is None or e.exporter in kinds)
        failing += tuple(k for k in kinds or () if not self.spec.exports_by(k))  # withdrawing a kind no longer used
        self.exports_failure = ExportsFailure(str(error), failing, attempts, time.time() + wait,
                                              time.monotonic() + wait)
        if isinstance(error, BsudError) and error.delay is None:
            error.delay = wait
        log.info("exports: next attempt", drive=self.spec.name, exports=list(failing), attempts=attempts,
                 retry_seconds=wait)
        self.emit(self.events.exports_failed(obs, str(error), failing))
        shown = self._remembered_exports(obs)
        self.status.record(shown, plan(self.spec, shown, self.max_volume_gib))
        self.last_obs = shown

    def plan_now(self, max_age: float | None = None) -> tuple[DriveObs, Plan]:
        obs, _ = self.observe(max_age)
        return obs, plan(self.spec, obs, self.max_volume_gib)

    def emit(self, events: list[Event]) -> None:
        """Each event as one log line, into the status (the last scale event) and to every listener."""
        for event in events:
            log.info("event", **{("event_kind" if k == "kind" else k): v for k, v in event.as_dict().items()
                                 if k != "time"})
            if event.direction is not None:
                self.status.last_scale_event = event
            for listener in self.listeners:
                try:
                    listener(event)
                except Exception:  # noqa: BLE001 - a listener never stops the drive
                    log.exception("event listener failed", drive=self.spec.name, event_kind=event.kind)

    def step(self, max_age: float | None = None) -> Plan:
        """Observe, plan, do the first action. Returns the plan that was acted on. A failure is counted in the
        status and, during a scale event, reported as that event having failed (it is retried)."""
        try:
            return self._step(max_age)
        except Exception as exc:
            self.status.errors += 1
            self.emit(self.events.failed(self.last_plan, self.last_obs, str(exc), time.monotonic()))
            raise

    def _step(self, max_age: float | None) -> Plan:
        started = time.monotonic()
        if max_age is None and self.last_obs is not None and self.last_obs.storage.missing:
            max_age = MISSING_LISTING_SECONDS
        obs, devices = self.observe(max_age)
        obs = self.last_obs = self._remembered_exports(obs)
        current = plan(self.spec, obs, self.max_volume_gib)
        self.status.record(obs, current)
        self.last_plan = current
        self.emit(self.events.planned(current, obs))
        action = current.action
        if isinstance(action, Idle | Wait | Blocked):
            # An episode ends: the same action planned later is a new attempt, not a repeat.
            self._repeats, self._unchanged, self._previous = 0, 0, None
        if isinstance(action, Idle | Wait):
            log.debug("drive", drive=self.spec.name, phase=current.phase, action=action.kind, reason=action.reason)
            # Observed and planned: whatever failed before works again — but exports still failing (tried later).
            self.status.last_error = obs.exports.error or None
            return current
        if isinstance(action, Blocked):
            log.warning("drive blocked", drive=self.spec.name, reason=action.reason)
            self.status.last_error = action.reason
            return current
        if self._previous == action and (self._repeats >= REPEAT_LIMIT or self._unchanged >= UNCHANGED_LIMIT):
            # Done that many times, each time successfully, and planned again: it has no effect. Say so and
            # back off (the daemon's delay doubles up to 5 minutes); never park the drive for good.
            self.status.phase = Phase.BLOCKED
            how = "with nothing to do" if self._unchanged >= UNCHANGED_LIMIT else "without effect"
            self.status.last_error = (f"{action.kind} was done {self._repeats} times in a row {how} "
                                      f"({action.reason}); trying again later, see the log")
            log.error("no progress", drive=self.spec.name, action=action.kind, repeats=self._repeats,
                      unchanged=self._unchanged)
            self._repeats, self._unchanged, self._previous = 0, 0, None
            raise BsudError(self.status.last_error, temporary=True)
        log.info("step", drive=self.spec.name, phase=current.phase, action=action.kind, reason=action.reason,
                 **{k: v for k, v in action.__dict__.items() if k != "reason" and v not in (None, "")})
        if isinstance(action, CreateVolume) and current.direction is Direction.UP and obs.usage is not None:
            self.clock.start(started, obs.usage.size)
        self.emit(self.events.executing(current, obs, started))
        try:
            outcome = self.executor.run(action, devices)
            self.status.last_error = None
        except Exception as exc:
            if isinstance(action, RemoveFromDrive):
                self._removal_failed(action.volume_id, exc)
            if isinstance(action, ApplyExports):
                self._exports_failed(exc, obs)
            if isinstance(exc, AttachmentLimitError):
                self._attach_refused(exc, obs)
            raise
        finally:
            if action.changes_cloud:
                self.snapshot.invalidate()
        if isinstance(action, RemoveFromDrive):
            self._removal_failures.pop(action.volume_id, None)
        if isinstance(action, ApplyExports):
            self.exports_failure = None
            self.emit(self.events.exports_applied(obs))
        self.status.outcome = outcome.value
        self.emit(self.events.executed(current, obs, time.monotonic(), self.executor.created))
        if outcome is Outcome.PREEMPTED:
            # A burst stopped the removal's move: the drive is planned again at once (growth first). Not a repeat:
            # bursts that come and go would otherwise make a removal look stuck.
            self._repeats, self._unchanged, self._previous = 0, 0, None
            return current
        # Only a completed execution counts as a repeat: a failure is retried with backoff, not counted.
        if self._previous != action:
            self._repeats, self._unchanged = 0, 0
        self._repeats += 1
        self._unchanged = self._unchanged + 1 if outcome is Outcome.UNCHANGED else 0
        self._previous = action
        if outcome is Outcome.UNCHANGED:
            log.info("nothing to do", drive=self.spec.name, action=action.kind)
        return current

    def run_until_settled(self, max_steps: int = 200, wait: float = 0.5) -> Plan:
        """Step until Idle (or Blocked); for the CLI and tests. Temporary errors are retried."""
        last: Plan | None = None
        for _ in range(max_steps):
            try:
                last = self.step(max_age=0)
            except BsudError as exc:
                if not exc.temporary:
                    raise
                log.info("temporary error, retrying", drive=self.spec.name, error=str(exc))
                time.sleep(wait)
                continue
            if isinstance(last.action, Idle | Blocked):
                return last
            if isinstance(last.action, Wait):
                time.sleep(wait)
        raise BsudError(f"drive {self.spec.name!r} did not settle within {max_steps} steps "
                        f"(last: {last.action.kind if last else 'none'})", temporary=True)
