"""Prometheus metrics (prometheus_client): served on ``daemon.metrics-listen``, written to
``daemon.metrics-textfile`` for node_exporter's textfile collector, or both.

The drives' gauges are read at scrape time from the last :class:`DaemonReport` (a drive taken out of the config
disappears with it); counters and the scale-duration histogram are fed by the engine's events and the cloud
provider's requests. Labels are bounded: drive names come from the config, phases and results are fixed words,
cloud actions and error codes are the API's, NFS clients are at most ``MAX_CLIENT_SERIES`` plus ``client="other"``
(``bsud.client_series``); no volume id is ever a label.

Names follow Prometheus' naming guide (base units, the unit last, ``_total`` on counters); a renamed series keeps
its old name one release as a deprecated alias (:data:`DEPRECATED`). The served endpoint adds the process's own
``process_*`` series; the textfile leaves them out: node_exporter serves its own ``process_*``, and a second family
of the same name from a textfile is dropped by it (an error logged at every scrape) — or, when node_exporter runs
with ``--web.disable-exporter-metrics``, passed off as node_exporter's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from prometheus_client import (CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics,
                               generate_latest, start_http_server)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bsud import __version__
from bsud.client_series import CLIENT_KEYS, OTHER_CLIENTS, ClientSeries
from bsud.config.rules import parse_listen
from bsud.logs import get_logger
from bsud.reconcile.events import ABANDONED, DONE, FAILED, STARTED, Event
from bsud.reconcile.model import PHASES, Phase
from bsud.reconcile.report import by_name
from bsud.sinks import DaemonReport

log = get_logger("bsud.metrics")

# A counter's ``_created`` gauge doubles the series of every labelled counter, for a value nobody alerts on: left
# out (the rules and the board use the counters' resets, as Prometheus does).
disable_created_metrics()

#: Decision → capacity usable (up) or volume retired (down): seconds to tens of minutes.
SCALE_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600)
#: The (direction, result) pairs a scale event can have: their counters exist from 0 for every drive, so that
#: ``increase()`` sees the first one and "started but not done" can be computed before the first done.
SCALE_RESULTS = (("up", STARTED), ("up", DONE), ("up", FAILED),
                 ("down", STARTED), ("down", DONE), ("down", FAILED), ("down", ABANDONED))

#: The I/O counters an export's server keeps (nfs-ganesha's), as metrics: (key in the status, name, help).
EXPORT_COUNTERS = (
    ("read_bytes", "bsud_export_read_bytes", "Bytes the export's clients read (servers that count: nfs-ganesha)"),
    ("write_bytes", "bsud_export_write_bytes", "Bytes the export's clients wrote"),
    ("requests", "bsud_export_requests", "Read and write requests of the export's clients"),
    ("errors", "bsud_export_errors", "Read and write requests that failed"),
    ("latency_ns", "bsud_export_latency_seconds", "Time the server spent in those requests, in all"),
)
#: The same counters per NFS client, over all the exports of the server (nfs-ganesha's ``ShowClients``).
CLIENT_COUNTERS = tuple((key, name.replace("bsud_export_", "bsud_nfs_client_"), text.replace("export's clients",
                                                                                        "client"))
                        for key, name, text in EXPORT_COUNTERS)

#: Series renamed to follow the naming guide, kept one release under their old name (same value): old → new.
DEPRECATED = {"bsud_drive_seconds_to_full": "bsud_drive_time_to_full_seconds"}


def deprecated_help(old: str) -> str:
    return f"deprecated: use {DEPRECATED[old]}; removed in the next release"


@dataclass(frozen=True)
class _View:
    """What one report shows (set whole by :meth:`Metrics.publish`, read by scrapes in other threads)."""

    report: DaemonReport
    clients: dict[str, dict[str, float]]
    other_clients: dict[str, float] | None


class _DriveCollector(Collector):
    """The drives' state, from the last report."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        view = self.metrics.view
        build = GaugeMetricFamily("bsud_build_info", "bsud's version (always 1)", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        if view is None:
            return
        report = view.report
        yield GaugeMetricFamily("bsud_last_report_timestamp_seconds", "When bsud last wrote its report (after "
                                "every step and every 5 s): old while the daemon is stopped or hung",
                                value=report.updated)
        yield from _drive_families(report)
        yield from _replication_families(report)
        yield from _client_families(view)
        if report.ganesha is not None:
            yield from _ganesha_families(report.ganesha)


def _drive_gauges() -> dict[str, GaugeMetricFamily]:
    return {
        "size": GaugeMetricFamily("bsud_drive_size_bytes", "The drive's filesystem size (mounted drives)",
                                  labels=["drive"]),
        "used": GaugeMetricFamily("bsud_drive_used_bytes", "Bytes of data on the drive (mounted drives)",
                                  labels=["drive"]),
        "metadata": GaugeMetricFamily("bsud_drive_metadata_used_ratio", "Share of btrfs' metadata space in use, "
                                      "0 to 1, unallocated space included (mounted drives): writes fail at 1",
                                      labels=["drive"]),
        "volumes": GaugeMetricFamily("bsud_drive_volumes", "Cloud volumes tagged for the drive",
                                     labels=["drive"]),
        "rate": GaugeMetricFamily("bsud_drive_write_rate_bytes_per_second",
                                  "How fast the drive's data grows now", labels=["drive"]),
        "to_full": GaugeMetricFamily("bsud_drive_time_to_full_seconds",
                                     "When the drive would be full at the present write rate (only while "
                                     "writing)", labels=["drive"]),
        "old_to_full": GaugeMetricFamily("bsud_drive_seconds_to_full",
                                         deprecated_help("bsud_drive_seconds_to_full"), labels=["drive"]),
        "grow": GaugeMetricFamily("bsud_drive_grow_estimate_seconds", "What a grow takes, from the decision to "
                                  "the capacity usable (learned from the drive's grows, else the provider's "
                                  "default)", labels=["drive"]),
        "blocked": GaugeMetricFamily("bsud_drive_blocked", "1 while the drive needs an operator",
                                     labels=["drive"]),
        "notes": GaugeMetricFamily("bsud_drive_notes", "Notes bsud has on the drive (a limit stops a scale-up, a "
                                   "volume in error...; bsud status says them)", labels=["drive"]),
        "phase": GaugeMetricFamily("bsud_drive_phase", "1 for the drive's current phase", labels=["drive", "phase"]),
        "observed": GaugeMetricFamily("bsud_drive_last_observed_timestamp_seconds", "When a step last observed "
                                      "the drive without error", labels=["drive"]),
        "exports": GaugeMetricFamily("bsud_drive_exports_applied", "1 when the drive's exports are applied as "
                                     "configured, 0 when not (drives with exports)", labels=["drive"]),
    }


def _drive_families(report: DaemonReport) -> Iterator[Metric]:
    """Each drive's gauges and counters, from its status in the report."""
    gauges = _drive_gauges()
    errors = CounterMetricFamily("bsud_step_errors", "Steps that failed (each is retried)", labels=["drive"])
    io = {key: CounterMetricFamily(name, text, labels=["drive", "export"]) for key, name, text in EXPORT_COUNTERS}
    for name, status in sorted(report.drives.items()):
        if status.size_bytes is not None:
            gauges["size"].add_metric([name], status.size_bytes)
            gauges["used"].add_metric([name], status.used_bytes or 0)
        if status.metadata_used_percent is not None:
            gauges["metadata"].add_metric([name], status.metadata_used_percent / 100)
        gauges["volumes"].add_metric([name], len(status.volumes))
        gauges["rate"].add_metric([name], status.write_rate)
        if status.seconds_to_full is not None:
            gauges["to_full"].add_metric([name], status.seconds_to_full)
            gauges["old_to_full"].add_metric([name], status.seconds_to_full)
        if status.grow_seconds:
            gauges["grow"].add_metric([name], status.grow_seconds)
        gauges["blocked"].add_metric([name], 1 if status.phase == Phase.BLOCKED else 0)
        gauges["notes"].add_metric([name], len(status.notes))
        for phase in dict.fromkeys((*PHASES, status.phase)):
            gauges["phase"].add_metric([name, phase], 1 if phase == status.phase else 0)
        if status.updated:
            gauges["observed"].add_metric([name], status.updated)
        if status.exports is not None:
            gauges["exports"].add_metric([name], 1 if status.exports.in_sync else 0)
            for export, counters in by_name(status.exports.stats).items():
                for key, family in io.items():
                    value = counters.get(key, 0)
                    family.add_metric([name, export], value / 1e9 if key == "latency_ns" else value)
        errors.add_metric([name], status.errors)
    yield from gauges.values()
    yield errors
    yield from io.values()


def _replication_families(report: DaemonReport) -> Iterator[Metric]:
    """Highly available drives: DRBD's role, connection and disks on this node, the size both nodes agreed on."""
    drives = [(name, s.replication, s.peer) for name, s in sorted(report.drives.items()) if s.replication]
    if not drives:
        return
    role = GaugeMetricFamily("bsud_drbd_role", "1 for the drive's DRBD role on this node (down: not up here)",
                             labels=["drive", "role"])
    connected = GaugeMetricFamily("bsud_drbd_connected", "1 while DRBD is connected to the peer", labels=["drive"])
    disk = GaugeMetricFamily("bsud_drbd_disk_up_to_date", "1 while the disk is UpToDate (node: local, peer)",
                             labels=["drive", "node"])
    size = GaugeMetricFamily("bsud_drbd_size_bytes", "The DRBD device's size: what both nodes' LVs agreed on",
                             labels=["drive"])
    backing = GaugeMetricFamily("bsud_drbd_backing_bytes", "This node's LV under DRBD", labels=["drive"])
    peer_size = GaugeMetricFamily("bsud_drbd_peer_volumes_bytes", "The peer's drive's volumes together, as the "
                                  "cloud lists them", labels=["drive"])
    for name, r, peer in drives:
        current = r.role if r.up and r.role else "down"
        for word in dict.fromkeys(("Primary", "Secondary", "down", current)):
            role.add_metric([name, word], 1 if word == current else 0)
        connected.add_metric([name], 1 if r.connected else 0)
        disk.add_metric([name, "local"], 1 if r.disk == "UpToDate" else 0)
        disk.add_metric([name, "peer"], 1 if r.peer_disk == "UpToDate" else 0)
        size.add_metric([name], r.size)
        backing.add_metric([name], r.backing_size)
        if peer is not None:
            peer_size.add_metric([name], peer.size_gib * 1024**3)
    yield from (role, connected, disk, size, backing, peer_size)


def _client_families(view: _View) -> Iterator[Metric]:
    """The NFS clients' counters: the ones with series of their own, and ``other``."""
    per_client = {key: CounterMetricFamily(name, text, labels=["client"]) for key, name, text in CLIENT_COUNTERS}
    shown = dict(view.clients)
    if view.other_clients is not None:
        shown[OTHER_CLIENTS] = view.other_clients
    for address, counters in shown.items():
        for key, family in per_client.items():
            value = counters.get(key, 0)
            family.add_metric([address], value / 1e9 if key == "latency_ns" else value)
    yield from per_client.values()


def _ganesha_families(ganesha: dict[str, Any]) -> Iterator[Metric]:
    """The nfs-ganesha bsud runs itself (``nfs.ganesha.managed``)."""
    restarts = CounterMetricFamily("bsud_ganesha_restarts", "Times the nfs-ganesha bsud runs itself ended "
                                   "or hung and was started again (nfs.ganesha.managed)")
    restarts.add_metric([], ganesha.get("restarts", 0))
    yield restarts
    running = GaugeMetricFamily("bsud_ganesha_running", "1 while the nfs-ganesha bsud runs itself is "
                                "running and sends its heartbeat, 0 while it starts, waits or restarts")
    running.add_metric([], 1 if str(ganesha.get("state", "")).startswith("running") else 0)
    yield running


class Metrics:
    """A report sink, an event listener and the cloud's request observer.

    ``registry`` holds bsud's own series (what the textfile gets); ``served`` adds the process's ``process_*``
    (what ``metrics-listen`` serves).
    """

    def __init__(self, textfile: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self.view: _View | None = None
        self.textfile = textfile
        self.clock = clock
        self.clients = ClientSeries()
        self.scale_events = Counter("bsud_scale_events", "Scale events by direction and result (started, done, "
                                    "failed, abandoned)", ["drive", "direction", "result"], registry=self.registry)
        self.scale_duration = Histogram("bsud_scale_duration_seconds", "From the decision to scale to the capacity "
                                        "usable (up) or the volume retired (down)", ["drive", "direction"],
                                        buckets=SCALE_BUCKETS, registry=self.registry)
        self.cloud_requests = Counter("bsud_cloud_requests", "Cloud API requests (every attempt, retries "
                                      "included) by action and result code", ["action", "code"],
                                      registry=self.registry)
        self.cloud_throttled = Counter("bsud_cloud_throttled", "Cloud API requests refused for throttling",
                                       registry=self.registry)
        self.registry.register(_DriveCollector(self))
        self.served = CollectorRegistry()
        self.served.register(self.registry)  # type: ignore[arg-type] - a registry collects like a collector
        ProcessCollector(registry=self.served)
        self._server: object | None = None
        self._textfile_failed = False
        self._lock = threading.Lock()

    def publish(self, report: DaemonReport) -> None:
        for drive in report.drives:
            for direction, result in SCALE_RESULTS:
                self.scale_events.labels(drive, direction, result)
        # Server-wide: drives sharing a server report the same clients, each as its last step saw them; the
        # highest count is the latest (taking one drive's could step back when another's is the fresher).
        clients: dict[str, dict[str, float]] = {}
        for status in report.drives.values():
            for address, counters in by_name(status.exports.clients).items() if status.exports else ():
                seen = clients.setdefault(address, {})
                for key in CLIENT_KEYS:
                    seen[key] = max(seen.get(key, 0.0), float(counters.get(key, 0) or 0))
        with self._lock:
            shown, other = self.clients.update(clients, self.clock())
            self.view = _View(report, shown, other)
        if self.textfile:
            self.write_textfile(self.textfile)

    def event(self, event: Event) -> None:
        if event.direction is None:
            return
        self.scale_events.labels(event.drive, event.direction, event.result).inc()
        if event.result == DONE and event.duration is not None:
            self.scale_duration.labels(event.drive, event.direction).observe(event.duration)

    def cloud_request(self, action: str, code: str, throttled: bool) -> None:
        self.cloud_requests.labels(action, code).inc()
        if throttled:
            self.cloud_throttled.inc()

    # -- outputs ----------------------------------------------------------------------------------

    def write_textfile(self, path: str) -> None:
        """Atomically (a temp file renamed over it), as node_exporter's textfile collector wants, and readable by
        it (mode 0644 whatever bsud's umask: the unit's is 0077; node_exporter runs as its own user)."""
        with self._lock:
            try:
                target = Path(path)
                if not target.parent.is_dir():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.parent.chmod(0o755)
                temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                try:
                    os.fchmod(fd, 0o644)
                    os.write(fd, generate_latest(self.registry))
                finally:
                    os.close(fd)
                os.replace(temp, target)
                self._textfile_failed = False
            except OSError as exc:
                if not self._textfile_failed:  # said once until it works again
                    log.warning("cannot write the metrics file", path=path, error=str(exc))
                self._textfile_failed = True

    def serve(self, listen: str) -> None:
        """Serve ``/metrics`` on ``host:port`` (a thread of its own); raises OSError when the port is taken."""
        where = parse_listen(listen)
        if where is None:
            raise ValueError(f"metrics-listen {listen!r} is not host:port")
        host, port = where
        self._server, _thread = start_http_server(port, addr=host, registry=self.served)
        log.info("serving metrics", listen=listen)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
