"""The daemon: one worker per drive (``bsud.worker``), a shared cloud snapshot, signals, systemd, and the sinks
its reports and events go to (status file, sd_notify, metrics, the on-event command).

Steady state: the sampler (one thread for all drives, :mod:`bsud.sampler`) reads each drive's live space from sysfs
and wakes it when it needs space; the drive runs a full observe/plan every ``full-check-seconds``. The cloud is read
once for all drives, and only when the snapshot is older than ``cloud-refresh-seconds`` (± 20 %), a drive changed
something, or the host's block device events concern a drive (:mod:`bsud.host.hotplug`): one DescribeVolumes per
20 minutes by default when nothing happens.

SIGTERM/SIGINT: drives finish their current step, then the daemon exits 0 (a long pvmove or
btrfs relocation is abandoned safely: both resume on the next start). SIGHUP: reload the
config; an invalid one is refused and the old one kept.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bsud import __version__
from bsud.backup.freeze import thaw_drives_left_frozen
from bsud.cloud import CloudProvider, make_provider
from bsud.config import Config, DriveConfig, InvalidConfig, Provider, load_config
from bsud.drives import Drives
from bsud.errors import BsudError, ConfigError
from bsud.exports import EXPORTERS, export_tools
from bsud.exports.ganesha_server import GaneshaServer
from bsud.host.hotplug import BlockEvents
from bsud.host.layouts import LAYOUTS, ReplicatedLvmLayout, StorageLayout
from bsud.lock import take_lock
from bsud.logs import get_logger, register_secrets
from bsud.metrics import Metrics
from bsud.reconcile.events import Event
from bsud.reconcile.observe import CloudSnapshot, unmanaged_drives
from bsud.runner import Runner, preflight
from bsud.sampler import Sampler
from bsud.sdnotify import notify, watchdog_interval
from bsud.sinks import DaemonReport, EventCommand, SdNotifyStatus, Sink, StatusFile
from bsud.worker import DriveWorker, WorkerContext

log = get_logger("bsud.daemon")

#: The cloud's permission check (DryRun of each call) runs once per boot, within this many seconds of the start.
PERMISSIONS_DELAY_SECONDS = 300.0
#: The cloud listing's lifetime varies by ± this fraction each time, so that a fleet's VMs do not list in step.
REFRESH_JITTER = 0.2
#: How often the status file is rewritten between steps (live used %, write rate, seconds to full).
STATUS_SECONDS = 5.0
#: Daemon settings read at start only (a reload that changes them says so and keeps the running ones).
RESTART_TO_APPLY = ("metrics_listen", "metrics_textfile", "on_event", "on_event_timeout_seconds")


def required_tools(config: Config, cloud: CloudProvider) -> dict[str, str]:
    """What the drives' layouts, exports and the provider run, each named once (every layout needs btrfs), with who
    needs it when that is a drive's export: an export kind's tools are needed only when a drive uses it."""
    tools = dict.fromkeys([*StorageLayout.tools, *(t for d in config.drives for t in LAYOUTS[d.layout].tools),
                           *(ReplicatedLvmLayout.tools if any(d.ha for d in config.drives) else ()), *cloud.tools],
                          "")
    for drive in config.drives:
        for kind in dict.fromkeys(e.exporter for e in drive.exports):
            for tool in export_tools([kind]):
                users = tools.get(tool)
                if users != "":
                    tools[tool] = f"{users}, " * bool(users) + f"the {kind} exports of drive {drive.name!r}"
    if manages_ganesha(config):
        tools["ganesha.nfsd"] = "the nfs-ganesha bsud runs itself (nfs.ganesha.managed)"
    return tools


def has_ganesha_exports(drive: DriveConfig) -> bool:
    return bool(drive.exports_by("nfs-ganesha"))


def manages_ganesha(config: Config) -> bool:
    """bsud runs ganesha.nfsd itself: ``nfs.ganesha.managed`` and a drive has an export it serves."""
    return config.nfs.ganesha.managed and any(has_ganesha_exports(d) for d in config.drives)


def not_run_here(config: Config) -> list[ConfigError]:
    """Drives the daemon cannot run with this config: a highly available drive on the local provider (its Primary
    makes and attaches volumes for the peer's VM, which the local provider has no notion of)."""
    if config.cloud.provider != Provider.LOCAL:
        return []
    return [ConfigError("a highly available drive needs a cloud provider (its Primary's bsud makes volumes for the "
                        "other node's drive and attaches them to its VM); the local provider has one machine only. "
                        "'bsud ha-config' still prints its drbd-reactor file", path=config.path, drive=d.name,
                        field="ha")
            for d in config.drives if d.ha is not None]


class Daemon:
    def __init__(self, config: Config, cloud: CloudProvider | None = None) -> None:
        self.config = config
        self.cloud = cloud or make_provider(config)
        self.snapshot = CloudSnapshot(self.cloud, config.daemon.cloud_refresh_seconds, jitter=REFRESH_JITTER)
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.publish_lock = threading.Lock()
        self.started = time.time()
        #: READY=1 sent (once every online drive is mounted, or at daemon.ready-timeout-seconds).
        self.ready = False
        #: Reloads asked for (SIGHUP) and how the last one ended ("applied" or "refused: <first problem>"), in the
        #: status file: ``bsud reload`` (the unit's ExecReload) waits for it and fails when the config was refused.
        self.reloads = 0
        self.reload_result = ""
        #: Why a drive's thread looks stuck, while it does (the watchdog is not pinged then).
        self.stuck: str | None = None
        #: What is wrong for every drive (cloud permissions refused), for the status and STATUS=.
        self.problems: list[str] = []
        #: The nfs-ganesha bsud talks to (its heartbeat) and runs itself (``nfs.ganesha.managed``), for every drive.
        self.ganesha = GaneshaServer()
        self.sinks: list[Sink] = [StatusFile(lambda: self.config.daemon.status_file), SdNotifyStatus()]
        #: Every drive's events go to these (shared with the workers' engines).
        self.listeners: list[Callable[[Event], None]] = []
        self.metrics: Metrics | None = None
        self.on_event: EventCommand | None = None
        settings = config.daemon
        if settings.metrics_listen or settings.metrics_textfile:
            self.metrics = Metrics(settings.metrics_textfile)
            self.sinks.append(self.metrics)
            self.listeners.append(self.metrics.event)
            self.cloud.on_request = self.metrics.cloud_request
        if settings.on_event:
            self.on_event = EventCommand(settings.on_event, settings.on_event_timeout_seconds)
            self.listeners.append(self.on_event)
        #: The drives' workers, each given what it needs of the daemon (not the daemon).
        self.drives = Drives(WorkerContext(cloud=self.cloud, snapshot=self.snapshot, config=lambda: self.config,
                                           publish=self.publish, listeners=self.listeners,
                                           ganesha=self.ganesha))
        self.workers: dict[str, DriveWorker] = self.drives.workers

    # -- status ------------------------------------------------------------------------------------

    def publish(self) -> None:
        """Every drive's report to every sink."""
        with self.publish_lock:
            listing = self.snapshot.cached()  # never the cloud itself: this runs on the main loop
            try:
                unmanaged = {} if listing is None else unmanaged_drives(listing, set(self.workers),
                                                                        self.cloud.identity().instance_id)
            except BsudError:
                unmanaged = {}
            report = DaemonReport(version=__version__, pid=os.getpid(), config=self.config.path,
                                  started=self.started, updated=time.time(),
                                  drives=self.drives.statuses(),
                                  unmanaged=unmanaged, not_mounted=tuple(self.drives.not_mounted()),
                                  ganesha=self.ganesha.status(), reloads=self.reloads,
                                  reload_result=self.reload_result, stuck=self.stuck,
                                  problems=tuple(self.problems))
            for sink in self.sinks:
                sink.publish(report)

    def _announce_ready(self, deadline: float) -> None:
        """READY=1 once every online drive is mounted — or at ``deadline``, naming those that are not. Until then
        systemd's start timeout is pushed out to the deadline (EXTEND_TIMEOUT_USEC), so the unit's own
        TimeoutStartSec only bounds a start that hangs before it gets here."""
        if self.ready:
            return
        waiting = self.drives.not_mounted()
        now = time.monotonic()
        if waiting and now < deadline:
            notify(f"EXTEND_TIMEOUT_USEC={int((deadline - now + 15) * 1e6)}")
            return
        self.ready = True
        if waiting:
            log.warning("ready, but drives are not mounted yet; units that need one wait with "
                        "bsud-wait-online@<drive>.service", drives=waiting,
                        after_seconds=self.config.daemon.ready_timeout_seconds)
        else:
            log.info("ready: every online drive is mounted")
        notify("READY=1")
        self.publish()

    def _watchdog_ok(self) -> bool:
        """No drive thread is stuck: otherwise the watchdog is not told all is well (systemd restarts bsud, whose
        start-up recovery lets the drive go on). Said once per stuck spell."""
        now = time.monotonic()
        stuck = self.drives.stuck(now)
        if stuck and stuck != self.stuck:
            log.error("a drive's thread is stuck; no longer pinging systemd's watchdog (it restarts bsud)",
                      why=stuck)
        elif self.stuck and not stuck:
            log.info("the stuck drive thread went on; pinging the watchdog again")
        self.stuck = stuck
        return stuck is None

    # -- lifecycle ---------------------------------------------------------------------------------

    def reload(self) -> None:
        notify("RELOADING=1", f"MONOTONIC_USEC={int(time.monotonic() * 1e6)}")
        try:
            new = load_config(self.config.path)
            refused = not_run_here(new)
            if refused:
                raise InvalidConfig(refused)
            if new.cloud != self.config.cloud:
                log.warning("the cloud section changed; restart bsud to apply it (keeping the old one)")
                new = Config(**{**new.__dict__, "cloud": self.config.cloud})
            started_with = {k: getattr(self.config.daemon, k) for k in RESTART_TO_APPLY}
            if {k: getattr(new.daemon, k) for k in RESTART_TO_APPLY} != started_with:
                log.warning("metrics-listen, metrics-textfile and on-event apply at the next restart (keeping "
                            "the running ones)")
                new = Config(**{**new.__dict__, "daemon": new.daemon.model_copy(update=started_with)})
            register_secrets(new.secrets())
            for warning in new.warnings:
                log.warning(warning)
            if new.nfs.ganesha != self.config.nfs.ganesha and self.ganesha.managed is not None:
                log.warning("the managed nfs-ganesha's settings apply at the next restart of bsud")
            self.config = new
            self.drives.apply(new)
            self._manage_ganesha()
            self.reload_result = "applied"
            log.info("config reloaded", path=new.path, drives=[d.name for d in new.drives])
        except InvalidConfig as exc:
            self.reload_result = f"refused: {exc.problems[0]}" + (f" (and {len(exc.problems) - 1} more problems)"
                                                                  if len(exc.problems) > 1 else "")
            for problem in exc.problems:
                log.error("config reload refused, keeping the running config", problem=str(problem))
        finally:
            self.reloads += 1
            if self.ready:  # before the first READY=1, readiness is still the drives' to give
                notify("READY=1")
        self.snapshot.invalidate()
        self.publish()

    def _manage_ganesha(self) -> None:
        """Run ganesha.nfsd when the config asks bsud to (started once; it runs until bsud stops)."""
        if manages_ganesha(self.config) and self.ganesha.managed is None:
            self.ganesha.start_managed(self.config.nfs.ganesha, on_up=self._ganesha_up)

    def _ganesha_up(self) -> None:
        """A new ganesha serves nothing yet: the drives with exports it serves add them now."""
        for worker in self.workers.values():
            if has_ganesha_exports(worker.reconciler.spec):
                worker.wake.set()

    def _check_permissions(self) -> None:
        """DryRun each call bsud makes, once per boot, at a random moment of the first minutes (a fleet booting
        together does not DryRun in step; restarts of bsud do not repeat it). A call refused is an error in the
        journal and the status, and bsud runs on: what the credentials allow (growing, say) still protects the
        drives."""
        marker = Path(self.config.daemon.status_file).with_name("permissions-checked")
        key = hashlib.sha256(repr((self.config.cloud.provider.value, self.config.cloud.endpoint,
                                   self.config.cloud.region, self.config.access_key)).encode()).hexdigest()
        try:
            if marker.read_text() == key:
                log.debug("cloud permissions already checked since boot", marker=str(marker))
                return
        except OSError:
            pass
        if self.stop_event.wait(random.uniform(0, PERMISSIONS_DELAY_SECONDS)):
            return
        try:
            notes = self.cloud.check_permissions()
        except BsudError as exc:
            log.error("cloud permissions", problem=str(exc))
            self.problems.append(str(exc))
            self.publish()
            return
        except Exception as exc:  # noqa: BLE001 - a check that could not run is a note, not a stop
            log.warning("cloud permissions could not be checked", error=str(exc))
            return
        for note in notes:
            log.warning("cloud permissions", note=note)
        if not notes:
            try:
                marker.write_text(key)
            except OSError as exc:
                log.debug("cannot remember the permission check", error=str(exc))

    def _start_outputs(self) -> None:
        """The on-event program must be there, and the metrics port free: refused at start, one line each."""
        settings = self.config.daemon
        if settings.on_event and not os.access(settings.on_event[0], os.X_OK):
            raise BsudError(f"{self.config.path}: field 'daemon.on-event': {settings.on_event[0]} is not an "
                            "executable file; fix the path or make it executable (chmod +x)")
        if self.metrics is not None and settings.metrics_listen:
            try:
                self.metrics.serve(settings.metrics_listen)
            except OSError as exc:
                raise BsudError(f"{self.config.path}: field 'daemon.metrics-listen': cannot listen on "
                                f"{settings.metrics_listen}: {exc.strerror or exc}; choose a free port") from None

    def run(self) -> int:
        refused = not_run_here(self.config)
        if refused:
            raise InvalidConfig(refused)
        self._lock = take_lock(self.config.daemon.status_file)
        preflight(required_tools(self.config, self.cloud), packages=export_tools(EXPORTERS))
        # The DryRun calls wait on the cloud: in the background, so that a cloud down at boot delays nothing.
        threading.Thread(target=self._check_permissions, name="permissions", daemon=True).start()
        self._start_outputs()
        if self.config.cloud.provider == Provider.LOCAL:
            os.makedirs(self.config.cloud.state_dir, exist_ok=True)
        ident = self.cloud.identity()
        log.info("bsud starting", version=__version__, instance=ident.instance_id, zone=ident.availability_zone,
                 provider=self.config.cloud.provider.value, drives=[d.name for d in self.config.drives])
        # a snapshot's freeze never outlives its bsud (one that runs now keeps its own)
        thaw_drives_left_frozen(self.config.drives, Runner(), self.config.daemon.status_file)
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_event.set())
        self.drives.apply(self.config)
        Sampler(lambda: list(self.workers.values()), lambda: self.config.daemon.usage_interval_seconds,
                self.stop_event).start()
        self._manage_ganesha()
        events = BlockEvents(self.drives.block_event)
        events.start()
        ready_by = time.monotonic() + self.config.daemon.ready_timeout_seconds
        self.publish()
        watchdog = watchdog_interval()
        next_ping = time.monotonic()
        next_publish = time.monotonic() + STATUS_SECONDS
        while not self.stop_event.is_set():
            self._announce_ready(ready_by)
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload()
            if time.monotonic() >= next_publish:
                self.publish()  # the live usage and write rate the sampler keeps
                next_publish = time.monotonic() + STATUS_SECONDS
            if time.monotonic() >= next_ping:
                if self._watchdog_ok() and watchdog:
                    notify("WATCHDOG=1")
                next_ping = time.monotonic() + (watchdog or 5.0)
            self.stop_event.wait(min(1.0, watchdog or 1.0))
        notify("STOPPING=1")
        events.stop()
        log.info("stopping: letting drives finish their current step")
        self.cloud.stop_event.set()
        self.drives.stop(30.0)
        self.ganesha.stop_managed()
        self.publish()
        if self.on_event is not None:
            self.on_event.close()
        if self.metrics is not None:
            self.metrics.close()
        log.info("bsud stopped")
        return 0
