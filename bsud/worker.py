"""One drive in the daemon: a thread running its steps, and the sample of its live space the daemon's sampler takes.

The daemon's one sampler thread (bsud.sampler) calls :meth:`DriveWorker.sample` for every drive every
``usage-interval-seconds``: it reads the mounted drive's space from sysfs (file reads: no process, no API call),
feeds the write rate, and wakes the drive at once when the planner's own :func:`scale_up_reason` says it needs
space — stopping first the move of a removal that the step thread may be in (a burst pre-empts a removal: see
bsud.host.preempt). When nothing the space is made of moved, a sample costs a few ``pread`` and ends there. The
drive's thread runs a full observe/plan/act step every ``full-check-seconds``, at once when woken, and waits after
a failed step what :mod:`bsud.retry` says for the error's kind.

A worker is given a :class:`WorkerContext` — the cloud, the config in force, where to publish, a clock — not the
daemon that runs it: it imports nothing of the daemon.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bsud.cloud.base import CloudProvider
from bsud.config import Config, DriveConfig, Target
from bsud.errors import BsudError
from bsud.exports.ganesha_server import GaneshaServer
from bsud.logs import get_logger
from bsud.reconcile.engine import DriveReconciler
from bsud.reconcile.events import Event
from bsud.reconcile.model import Blocked, DriveObs, Idle, Wait
from bsud.reconcile.observe import CloudSnapshot, usage_obs
from bsud.host.writeback import bytes_written, page_cache
from bsud.reconcile.pace import RateMeter, WritebackMeter
from bsud.reconcile.scaling import scale_up_reason
from bsud.retry import Retry, retry_after
from bsud.watch import StepWatch

log = get_logger("bsud.daemon")

#: A sampler that has not finished a sample for this long is stuck (it samples every 0.25 s, at worst every 2 s).
SAMPLER_STUCK_SECONDS = 120.0
#: A drive's space is read in full at least this often even when nothing was written: the status and metrics see the
#: write rate fall, the page cache's room is read again, and so are the chunks allocated and the devices' sizes (not
#: in the fingerprint: they move the free bytes only).
FULL_SAMPLE_SECONDS = 5.0


def _monotonic() -> float:
    """The default clock: ``time.monotonic``, looked up at each call (a test gives this module a fake ``time``)."""
    return time.monotonic()


@dataclass(frozen=True)
class WorkerContext:
    """What a drive's worker needs of whoever runs it: the cloud and its shared listing, the config in force (read
    anew: a reload replaces it), where a report goes, the event listeners, and a clock (monotonic seconds)."""

    cloud: CloudProvider
    snapshot: CloudSnapshot
    config: Callable[[], Config]
    publish: Callable[[], None] = lambda: None
    listeners: list[Callable[[Event], None]] = field(default_factory=list)
    clock: Callable[[], float] = _monotonic
    #: The nfs-ganesha bsud manages, when it does (the ganesha exports' steps register with it).
    ganesha: GaneshaServer | None = None


@dataclass(frozen=True)
class FullSample:
    """What the last full sample of a drive saw: the next sample ends early when nothing of it changed."""

    fingerprint: tuple[object, ...]   # the layout's live_fingerprint before the space was read
    spec: DriveConfig                 # the config and the observation it was judged with (compared by identity)
    obs: DriveObs
    used: int
    at: float                         # monotonic
    needs_space: bool                 # scale_up_reason gave a reason: every sample asks again


class DriveWorker(threading.Thread):
    def __init__(self, context: WorkerContext, spec: DriveConfig) -> None:
        super().__init__(name=f"drive-{spec.name}", daemon=True)
        self.context = context
        self.clock = context.clock
        config = context.config()
        self.reconciler = DriveReconciler(spec, context.cloud, context.snapshot, config.cloud.provider,
                                          settings=config.daemon, nfs=config.nfs,
                                          ganesha=context.ganesha)
        self.reconciler.meter = RateMeter(config.daemon.rate_peak_seconds)
        self.reconciler.writeback = WritebackMeter()
        self.reconciler.listeners = context.listeners
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        #: Set by the sampler: the drive needs space now; run a full step without waiting.
        self.urgent = threading.Event()
        #: Set when the host says something changed (a member device went or came): a full step without waiting.
        self.poked = threading.Event()
        self.quiet_until = 0.0
        self.pending_spec: DriveConfig | None = None
        self.lock = threading.Lock()
        #: The step thread's progress (the daemon stops pinging systemd's watchdog when it is overdue).
        self.watch = StepWatch(spec.name)
        #: When the sampler last finished a sample (monotonic): a sampler that stops sampling stops the drive's
        #: reaction to a writer, which is as bad as a stuck step.
        self.sampled = self.clock()
        #: The sampler's schedule for this drive: when it is due, whether its last sample was cheap (sysfs; else it
        #: ran a process, and the drive is sampled in a thread of its own, at most every 2 s), and that thread.
        self.next_sample = 0.0
        self.cheap = True
        self.sampling_alone: threading.Thread | None = None
        self.last_full: FullSample | None = None

    def update(self, spec: DriveConfig) -> None:
        with self.lock:
            self.pending_spec = spec
        self.wake.set()

    def poke(self) -> None:
        """Look again at once (a block device event concerning the drive)."""
        self.poked.set()
        self.wake.set()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def _sleep(self, seconds: float) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    def _wait_after_failure(self, retry: Retry) -> None:
        """Wait what the retry policy said. A reload, a device event concerning the drive or the stop end the wait;
        any other wake (the sampler's call for space) only when the policy says so."""
        deadline = self.clock() + retry.delay
        while not self.stop_event.is_set():
            remaining = deadline - self.clock()
            if remaining <= 0:
                return
            self._sleep(remaining)
            with self.lock:
                reloaded = self.pending_spec is not None
            if retry.woken_by_need or reloaded or self.poked.is_set() or self.stop_event.is_set():
                return

    # -- sampling --------------------------------------------------------------------------------

    def sample(self) -> bool:
        """Read the drive's live space once, feed the write rate; True when sysfs answered (no process).

        The sample ends after a few ``pread`` when nothing changed since the last full one: the same fingerprint of
        the space (the layout's ``live_fingerprint``: its allocation counters, which any write moves at once), the
        same observation and config, no reason to grow found then, and that one less than
        :data:`FULL_SAMPLE_SECONDS` old. The space is then what it was; the write rate is fed the same used bytes
        (its windows see the time pass: the rate falls as before). Any other sample goes through it all at once:
        a writer's first write is judged by the very sample that would have judged it before."""
        rec = self.reconciler
        spec, obs = rec.spec, rec.last_obs
        assert rec.meter is not None
        if spec.target != Target.ONLINE or obs is None or not obs.mounted:
            self.last_full = None
            return True
        fingerprint = rec.layout.live_fingerprint(spec.mount_path)  # before the space: a write in between shows
        last = self.last_full
        if last is not None and fingerprint is not None and fingerprint == last.fingerprint and \
                spec is last.spec and obs is last.obs and not last.needs_space:
            now = self.clock()
            if now - last.at < FULL_SAMPLE_SECONDS:
                rec.meter.add(now, last.used)
                return True
        self.last_full = None
        try:
            space = rec.layout.live_usage(spec.mount_path)
        except BsudError:
            return True
        usage = usage_obs(space)
        now = self.clock()
        rec.meter.add(now, usage.used)
        if rec.writeback is not None:
            rec.dirty_room, saturated = page_cache()
            rec.writeback.add(now, bytes_written(v.device for v in obs.volumes if v.member and v.device), saturated)
        pace = rec.pace()
        rec.status.record_usage(usage, pace)
        reason = scale_up_reason(spec, usage, pace)
        if reason is not None and now >= self.quiet_until and not self.urgent.is_set():
            log.info("scale-up trigger", drive=spec.name, reason=reason, used=usage.used, free=usage.free,
                     write_rate=round(pace.write_rate))
            self.urgent.set()
            self.wake.set()
        # A removal under way (its move holds the step thread for hours on a big volume) gives way at once: its move
        # is stopped, the step ends and the drive grows. Once per removal; a no-op when none runs.
        rec.layout.preemption.sampled(usage.used, usage.free, reason)
        if fingerprint is not None:
            self.last_full = FullSample(fingerprint, spec, obs, usage.used, now, reason is not None)
        return space.source == "sysfs"

    def sample_once(self, beat: float, interval: float) -> None:
        """One sample as the sampler takes it on its beat at ``beat`` (monotonic): never raises, and sets when the
        next one is due — the next beat, or at least 2 s after this one ends when it ran a process."""
        try:
            cheap = self.sample()
        except Exception:  # noqa: BLE001 - sampling must never stop the sampler (nor the other drives')
            log.exception("sampling failed", drive=self.reconciler.spec.name)
            cheap = False
        self.sampled = self.clock()
        self.cheap = cheap
        self.next_sample = beat + interval if cheap else self.sampled + max(interval, 2.0)

    def overdue(self, now: float) -> str | None:
        """Why this drive's threads look stuck (a step past its operation's bound, a sampler that stopped), or
        None."""
        stuck = self.watch.overdue(now)
        if stuck is None and now - self.sampled > SAMPLER_STUCK_SECONDS:
            stuck = f"drive {self.reconciler.spec.name!r}: no usage sample for {now - self.sampled:.0f} s"
        return stuck

    # -- steps ------------------------------------------------------------------------------------

    def run(self) -> None:
        settings = self.context.config().daemon
        last_full = 0.0
        failures = 0  # failed steps in a row
        self._recover()
        while not self.stop_event.is_set():
            with self.lock:
                if self.pending_spec is not None:
                    config = self.context.config()  # the reloaded daemon and nfs sections apply too
                    settings = config.daemon
                    self.reconciler.update_spec(self.pending_spec, settings, config.nfs)
                    self.pending_spec = None
                    last_full = 0.0
            current = self.reconciler.last_plan
            settled = current is not None and isinstance(current.action, Idle | Blocked)
            remaining = settings.full_check_seconds - (self.clock() - last_full)
            if settled and remaining > 0 and not self.urgent.is_set() and not self.poked.is_set():
                self._sleep(remaining)
                continue
            urgent = self.urgent.is_set()
            self.urgent.clear()
            self.poked.clear()
            self.watch.begin()
            try:
                result, failure = self.reconciler.step(), None
            except Exception as exc:  # noqa: BLE001 - a bug in one drive must not stop the others
                result, failure = None, exc
            finally:
                self.watch.end()
            if failure is not None:
                failures += 1
                self._failed(failure, retry_after(failure, failures, settings.retry_seconds,
                                                  settings.full_check_seconds))
                continue
            assert result is not None
            last_full = self.clock()
            failures = 0
            self.context.publish()
            if urgent and isinstance(result.action, Idle | Blocked | Wait):
                # The sampler asked for space and the planner cannot give it now (a limit, a block): say it
                # once per full check, not on every sample.
                self.quiet_until = self.clock() + settings.full_check_seconds
            if isinstance(result.action, Wait):
                self._sleep(min(1.0, settings.full_check_seconds))

    def _recover(self) -> None:
        """Undo at start what a kill mid-command left on the host (a failure is logged; the steps go on)."""
        self.watch.bind()
        self.watch.begin()
        try:
            self.reconciler.layout.recover()
        except BsudError as exc:
            log.warning("recovery at start failed", drive=self.reconciler.spec.name, error=str(exc))
        finally:
            self.watch.end()

    def _failed(self, failure: Exception, retry: Retry) -> None:
        """A failed step: in the status and the log, then the wait the retry policy gives."""
        if isinstance(failure, BsudError):
            self.reconciler.status.last_error = str(failure)
            log.warning("step failed", drive=self.reconciler.spec.name, error=str(failure),
                        temporary=failure.temporary, kind=retry.kind.value, retry_seconds=round(retry.delay, 3))
        else:
            self.reconciler.status.last_error = f"internal error: {failure!r}"
            log.error("step crashed", drive=self.reconciler.spec.name, exc_info=failure,
                      retry_seconds=round(retry.delay, 3))
        self.context.publish()
        self._wait_after_failure(retry)
