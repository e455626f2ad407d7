"""The daemon: one thread per drive, a shared cloud snapshot, signals, systemd and the status file.

Steady state: each drive checks its usage every ``usage-interval-seconds`` (local, cheap),
and runs a full observe/plan every ``full-check-seconds`` or as soon as usage crosses a
threshold. The cloud is read once for all drives, and only when the snapshot is older than
``cloud-refresh-seconds`` or a drive changed something: one DescribeVolumes per minute by
default when nothing happens.

SIGTERM/SIGINT: drives finish their current step, then the daemon exits 0 (a long pvmove or
btrfs relocation is abandoned safely: both resume on the next start). SIGHUP: reload the
config; an invalid one is refused and the old one kept.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from bsud import __version__
from bsud.cloud import CloudProvider, make_provider
from bsud.config import Config, DriveConfig, InvalidConfig, Layout, Provider, load_config
from bsud.errors import BsudError
from bsud.logs import get_logger, register_secrets
from bsud.reconcile.engine import DriveReconciler
from bsud.reconcile.model import Blocked, Idle
from bsud.reconcile.observe import CloudSnapshot, unmanaged_drives
from bsud.runner import preflight
from bsud.sdnotify import notify, watchdog_interval

log = get_logger("bsud.daemon")


def required_tools(config: Config) -> list[str]:
    tools = ["blkid", "wipefs", "mount", "umount", "btrfs", "mkfs.btrfs"]
    if any(d.layout == Layout.LVM for d in config.drives):
        tools.append("lvm")
    if config.cloud.provider == Provider.LOCAL:
        tools.append("losetup")
    return tools


def write_status(path: str, data: dict[str, Any]) -> None:
    """Atomic write: readers see the old file or the new one, never half of one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, target)


class DriveWorker(threading.Thread):
    def __init__(self, daemon: Daemon, spec: DriveConfig) -> None:
        super().__init__(name=f"drive-{spec.name}", daemon=True)
        self.owner = daemon
        self.reconciler = DriveReconciler(spec, daemon.cloud, daemon.snapshot, daemon.config.cloud.provider)
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.pending_spec: DriveConfig | None = None
        self.lock = threading.Lock()

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

    def _usage_crossed(self) -> bool:
        """Cheap check between full steps: has used % crossed a threshold?"""
        spec = self.reconciler.spec
        try:
            usage = self.reconciler.layout.usage(spec.mount_path)
        except BsudError:
            return True
        pct = usage.used_percent
        return pct >= spec.max_used_space_perc or pct <= spec.min_used_space_perc

    def run(self) -> None:
        settings = self.owner.config.daemon
        last_full = 0.0
        delay = settings.retry_seconds
        while not self.stop_event.is_set():
            with self.lock:
                if self.pending_spec is not None:
                    self.reconciler.update_spec(self.pending_spec)
                    self.pending_spec = None
                    last_full = 0.0
            current = self.reconciler.last_plan
            idle = current is not None and isinstance(current.action, Idle)
            if idle and time.monotonic() - last_full < settings.full_check_seconds and \
                    current.phase == "online" and not self._usage_crossed():
                self._sleep(settings.usage_interval_seconds)
                continue
            try:
                result = self.reconciler.step()
                last_full = time.monotonic()
                delay = settings.retry_seconds
            except BsudError as exc:
                self.reconciler.status.last_error = str(exc)
                log.warning("step failed", drive=self.reconciler.spec.name, error=str(exc), temporary=exc.temporary)
                self.owner.publish()
                self._sleep(delay)
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
            if isinstance(result.action, Idle):
                self._sleep(settings.usage_interval_seconds)
            elif isinstance(result.action, Blocked):
                self._sleep(settings.full_check_seconds)
            elif result.action.kind == "Wait":
                self._sleep(min(2.0, settings.usage_interval_seconds))


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

    # -- status ------------------------------------------------------------------------------------

    def publish(self) -> None:
        with self.publish_lock:
            drives = {name: w.reconciler.status.__dict__ for name, w in self.workers.items()}
            try:
                unmanaged = unmanaged_drives(self.snapshot.by_drive(), set(self.workers),
                                             self.cloud.identity().instance_id)
            except BsudError:
                unmanaged = {}
            data = {"version": __version__, "pid": os.getpid(), "config": self.config.path,
                    "started": self.started, "updated": time.time(), "drives": drives, "unmanaged": unmanaged}
            try:
                write_status(self.config.daemon.status_file, data)
            except OSError as exc:
                log.warning("cannot write the status file", path=self.config.daemon.status_file, error=str(exc))
            lines = [w.reconciler.status.line() for w in self.workers.values()]
            notify("STATUS=" + ("; ".join(lines) if lines else "no drives"))

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
        preflight(required_tools(self.config))
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
        while not self.stop_event.is_set():
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload()
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
