"""The daemon: one thread per drive, a shared cloud snapshot, signals, systemd and the status file.

Steady state: a sampler thread per drive reads the mounted drive's live space from sysfs every
``usage-interval-seconds`` (file reads: no process, no API call) and keeps its write rate; the
drive runs a full observe/plan every ``full-check-seconds``, or at once when the sampler sees it
needs space (the planner's own :func:`scale_up_reason`: over the threshold, metadata short, or full
sooner than a few grow times at the present rate). The cloud is read once for all drives, and only
when the snapshot is older than ``cloud-refresh-seconds`` or a drive changed something: one
DescribeVolumes per minute by default when nothing happens.

SIGTERM/SIGINT: drives finish their current step, then the daemon exits 0 (a long pvmove or
btrfs relocation is abandoned safely: both resume on the next start). SIGHUP: reload the
config; an invalid one is refused and the old one kept.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from pathlib import Path

from bsud import __version__
from bsud.cloud import CloudProvider, make_provider
from bsud.config import Config, DriveConfig, InvalidConfig, Provider, Target, load_config
from bsud.errors import BsudError
from bsud.host.layouts import LAYOUTS, StorageLayout
from bsud.logs import get_logger, register_secrets
from bsud.reconcile.engine import DriveReconciler
from bsud.reconcile.model import Blocked, Idle, Wait
from bsud.reconcile.observe import CloudSnapshot, unmanaged_drives, usage_obs
from bsud.reconcile.pace import RateMeter
from bsud.reconcile.scaling import scale_up_reason
from bsud.runner import preflight
from bsud.sdnotify import notify, watchdog_interval
from bsud.sinks import DaemonReport, SdNotifyStatus, Sink, StatusFile

log = get_logger("bsud.daemon")

#: How often the status file is rewritten between steps (live used %, write rate, seconds to full).
STATUS_SECONDS = 5.0


def required_tools(config: Config, cloud: CloudProvider) -> list[str]:
    """What the drives' layouts and the provider run, each named once (every layout needs btrfs)."""
    tools = [*StorageLayout.tools, *(t for d in config.drives for t in LAYOUTS[d.layout].tools), *cloud.tools]
    return list(dict.fromkeys(tools))


class AlreadyRunning(BsudError):
    pass


def take_lock(status_file: str) -> int:
    """One daemon per status file: an exclusive lock on ``<status-file>.lock``, held until the process ends.

    A second daemon started on the same config (or the same default status file) refuses to run and names the
    first one's pid. The lock dies with its process, even after kill -9: nothing to clean up.
    """
    path = Path(status_file + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(f"another bsud (pid {holder}) is running with status file {status_file}; stop it "
                             "first (or give this one its own daemon.status-file)") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:  # a full disk: the lock holds all the same, only the pid is not written down
        log.warning("cannot write the pid into the lock file", path=str(path), error=str(exc))
    return fd


class DriveWorker(threading.Thread):
    def __init__(self, daemon: Daemon, spec: DriveConfig) -> None:
        super().__init__(name=f"drive-{spec.name}", daemon=True)
        self.owner = daemon
        self.reconciler = DriveReconciler(spec, daemon.cloud, daemon.snapshot, daemon.config.cloud.provider,
                                          settings=daemon.config.daemon)
        self.reconciler.meter = RateMeter()
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        #: Set by the sampler: the drive needs space now; run a full step without waiting.
        self.urgent = threading.Event()
        self.quiet_until = 0.0
        self.pending_spec: DriveConfig | None = None
        self.lock = threading.Lock()
        self.sampler = threading.Thread(target=self._sample_loop, name=f"sample-{spec.name}", daemon=True)

    def start(self) -> None:
        super().start()
        self.sampler.start()

    def update(self, spec: DriveConfig) -> None:
        with self.lock:
            self.pending_spec = spec
        self.wake.set()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def _sleep(self, seconds: float) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    # -- sampling --------------------------------------------------------------------------------

    def sample(self) -> bool:
        """Read the drive's live space once, feed the write rate; True when sysfs answered (no process)."""
        rec = self.reconciler
        spec, obs = rec.spec, rec.last_obs
        if spec.target != Target.ONLINE or obs is None or not obs.mounted:
            return True
        try:
            space = rec.layout.live_usage(spec.mount_path)
        except BsudError:
            return True
        usage = usage_obs(space)
        now = time.monotonic()
        assert rec.meter is not None
        rec.meter.add(now, usage.used)
        pace = rec.pace()
        rec.status.record_usage(usage, pace)
        reason = scale_up_reason(spec, usage, pace)
        if reason is not None and now >= self.quiet_until and not self.urgent.is_set():
            log.info("scale-up trigger", drive=spec.name, reason=reason, used=usage.used, free=usage.free,
                     write_rate=round(pace.write_rate))
            self.urgent.set()
            self.wake.set()
        return space.source == "sysfs"

    def _sample_loop(self) -> None:
        interval = self.owner.config.daemon.usage_interval_seconds
        while not self.stop_event.is_set():
            try:
                cheap = self.sample()
            except Exception:  # noqa: BLE001 - sampling must never stop the drive's own thread
                log.exception("sampling failed", drive=self.reconciler.spec.name)
                cheap = False
            # Without sysfs each sample is a process: sample no more than every 2 s then.
            self.stop_event.wait(interval if cheap else max(interval, 2.0))

    # -- steps ------------------------------------------------------------------------------------

    def run(self) -> None:
        settings = self.owner.config.daemon
        last_full = 0.0
        delay = settings.retry_seconds
        try:
            self.reconciler.layout.recover()
        except BsudError as exc:
            log.warning("recovery at start failed", drive=self.reconciler.spec.name, error=str(exc))
        while not self.stop_event.is_set():
            with self.lock:
                if self.pending_spec is not None:
                    settings = self.owner.config.daemon  # the reloaded daemon section applies too
                    self.reconciler.update_spec(self.pending_spec, settings)
                    self.pending_spec = None
                    last_full = 0.0
            current = self.reconciler.last_plan
            settled = current is not None and isinstance(current.action, Idle | Blocked)
            remaining = settings.full_check_seconds - (time.monotonic() - last_full)
            if settled and remaining > 0 and not self.urgent.is_set():
                self._sleep(remaining)
                continue
            urgent = self.urgent.is_set()
            self.urgent.clear()
            try:
                result = self.reconciler.step()
                last_full = time.monotonic()
                delay = settings.retry_seconds
            except BsudError as exc:
                self.reconciler.status.last_error = str(exc)
                log.warning("step failed", drive=self.reconciler.spec.name, error=str(exc), temporary=exc.temporary)
                self.owner.publish()
                self._sleep(exc.delay if exc.delay is not None else delay)
                delay = min(delay * 2, 300.0)
                continue
            except Exception as exc:  # noqa: BLE001 - a bug in one drive must not stop the others
                self.reconciler.status.last_error = f"internal error: {exc!r}"
                log.exception("step crashed", drive=self.reconciler.spec.name)
                self.owner.publish()
                self._sleep(delay)
                delay = min(delay * 2, 300.0)
                continue
            self.owner.publish()
            if urgent and isinstance(result.action, Idle | Blocked | Wait):
                # The sampler asked for space and the planner cannot give it now (a limit, a block): say it
                # once per full check, not on every sample.
                self.quiet_until = time.monotonic() + settings.full_check_seconds
            if isinstance(result.action, Wait):
                self._sleep(min(1.0, settings.full_check_seconds))


class Daemon:
    def __init__(self, config: Config, cloud: CloudProvider | None = None) -> None:
        self.config = config
        self.cloud = cloud or make_provider(config)
        self.snapshot = CloudSnapshot(self.cloud, config.daemon.cloud_refresh_seconds)
        self.workers: dict[str, DriveWorker] = {}
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.publish_lock = threading.Lock()
        self.started = time.time()
        self.sinks: list[Sink] = [StatusFile(lambda: self.config.daemon.status_file), SdNotifyStatus()]

    # -- status ------------------------------------------------------------------------------------

    def publish(self) -> None:
        """Every drive's report to every sink."""
        with self.publish_lock:
            try:
                unmanaged = unmanaged_drives(self.snapshot.by_drive(), set(self.workers),
                                             self.cloud.identity().instance_id)
            except BsudError:
                unmanaged = {}
            report = DaemonReport(version=__version__, pid=os.getpid(), config=self.config.path,
                                  started=self.started, updated=time.time(),
                                  drives={name: w.reconciler.status for name, w in self.workers.items()},
                                  unmanaged=unmanaged)
            for sink in self.sinks:
                sink.publish(report)

    # -- lifecycle ---------------------------------------------------------------------------------

    def _start_workers(self) -> None:
        wanted = {d.name: d for d in self.config.drives}
        for name in list(self.workers):
            if name not in wanted:
                log.info("drive removed from the config: left as it is, no longer managed", drive=name)
                self.workers.pop(name).stop()
        for name, spec in wanted.items():
            if name in self.workers:
                self.workers[name].update(spec)
            else:
                worker = DriveWorker(self, spec)
                self.workers[name] = worker
                worker.start()

    def reload(self) -> None:
        notify("RELOADING=1", f"MONOTONIC_USEC={int(time.monotonic() * 1e6)}")
        try:
            new = load_config(self.config.path)
            if new.cloud != self.config.cloud:
                log.warning("the cloud section changed; restart bsud to apply it (keeping the old one)")
                new = Config(**{**new.__dict__, "cloud": self.config.cloud})
            register_secrets(new.secrets())
            for warning in new.warnings:
                log.warning(warning)
            self.config = new
            self._start_workers()
            log.info("config reloaded", path=new.path, drives=[d.name for d in new.drives])
        except InvalidConfig as exc:
            for problem in exc.problems:
                log.error("config reload refused, keeping the running config", problem=str(problem))
        finally:
            notify("READY=1")
        self.snapshot.invalidate()

    def run(self) -> int:
        self._lock = take_lock(self.config.daemon.status_file)
        preflight(required_tools(self.config, self.cloud))
        if self.config.cloud.provider == Provider.LOCAL:
            os.makedirs(self.config.cloud.state_dir, exist_ok=True)
        ident = self.cloud.identity()
        log.info("bsud starting", version=__version__, instance=ident.instance_id, zone=ident.availability_zone,
                 provider=self.config.cloud.provider.value, drives=[d.name for d in self.config.drives])
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_event.set())
        self._start_workers()
        notify("READY=1")
        self.publish()
        watchdog = watchdog_interval()
        next_ping = time.monotonic()
        next_publish = time.monotonic() + STATUS_SECONDS
        while not self.stop_event.is_set():
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload()
            if time.monotonic() >= next_publish:
                self.publish()  # the live usage and write rate the samplers keep
                next_publish = time.monotonic() + STATUS_SECONDS
            if watchdog and time.monotonic() >= next_ping:
                notify("WATCHDOG=1")
                next_ping = time.monotonic() + watchdog
            self.stop_event.wait(min(1.0, watchdog or 1.0))
        notify("STOPPING=1")
        log.info("stopping: letting drives finish their current step")
        self.cloud.stop_event.set()
        for worker in self.workers.values():
            worker.stop()
        deadline = time.monotonic() + 30
        for worker in self.workers.values():
            worker.join(max(0.1, deadline - time.monotonic()))
        still = [w.reconciler.spec.name for w in self.workers.values() if w.is_alive()]
        if still:
            log.warning("abandoning long steps; they resume on the next start", drives=still)
        self.publish()
        log.info("bsud stopped")
        return 0
