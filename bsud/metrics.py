"""Prometheus metrics (prometheus_client): served on ``daemon.metrics-listen``, written to
``daemon.metrics-textfile`` for node_exporter's textfile collector, or both.

The drives' gauges are read at scrape time from the last :class:`DaemonReport` (a drive taken out of the config
disappears with it); counters and the scale-duration histogram are fed by the engine's events and the cloud
provider's requests. Labels are bounded: drive names come from the config, phases and results are fixed words,
cloud actions and error codes are the API's; no volume id is ever a label.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bsud import __version__
from bsud.config.rules import parse_listen
from bsud.logs import get_logger
from bsud.reconcile.events import DONE, Event
from bsud.reconcile.model import PHASES
from bsud.sinks import DaemonReport

log = get_logger("bsud.metrics")

#: Decision → capacity usable (up) or volume retired (down): seconds to tens of minutes.
SCALE_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600)


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


class _DriveCollector(Collector):
    """The drives' state, from the last report."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        report = self.metrics.report
        build = GaugeMetricFamily("bsud_build_info", "bsud's version (always 1)", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        if report is None:
            return
        gauges = {
            "size": GaugeMetricFamily("bsud_drive_size_bytes", "The drive's filesystem size (mounted drives)",
                                      labels=["drive"]),
            "used": GaugeMetricFamily("bsud_drive_used_bytes", "Bytes of data on the drive (mounted drives)",
                                      labels=["drive"]),
            "volumes": GaugeMetricFamily("bsud_drive_volumes", "Cloud volumes tagged for the drive",
                                         labels=["drive"]),
            "rate": GaugeMetricFamily("bsud_drive_write_rate_bytes_per_second",
                                      "How fast the drive's data grows now", labels=["drive"]),
            "to_full": GaugeMetricFamily("bsud_drive_seconds_to_full",
                                         "When the drive would be full at the present write rate (only while "
                                         "writing)", labels=["drive"]),
            "blocked": GaugeMetricFamily("bsud_drive_blocked", "1 while the drive needs an operator",
                                         labels=["drive"]),
            "phase": GaugeMetricFamily("bsud_drive_phase", "1 for the drive's current phase", labels=["drive", "phase"]),
            "exports": GaugeMetricFamily("bsud_drive_exports_applied", "1 when the drive's exports are applied as "
                                         "configured, 0 when not (drives with exports)", labels=["drive"]),
        }
        errors = CounterMetricFamily("bsud_step_errors", "Steps that failed (each is retried)", labels=["drive"])
        io = {key: CounterMetricFamily(name, text, labels=["drive", "export"]) for key, name, text in EXPORT_COUNTERS}
        per_client = {key: CounterMetricFamily(name, text, labels=["client"]) for key, name, text in CLIENT_COUNTERS}
        clients: dict[str, dict[str, int]] = {}  # server-wide: drives sharing a server report the same clients
        for name, status in sorted(report.drives.items()):
            if status.size_bytes is not None:
                gauges["size"].add_metric([name], status.size_bytes)
                gauges["used"].add_metric([name], status.used_bytes or 0)
            gauges["volumes"].add_metric([name], len(status.volumes))
            gauges["rate"].add_metric([name], status.write_rate)
            if status.seconds_to_full is not None:
                gauges["to_full"].add_metric([name], status.seconds_to_full)
            gauges["blocked"].add_metric([name], 1 if status.phase == "blocked" else 0)
            for phase in dict.fromkeys((*PHASES, status.phase)):
                gauges["phase"].add_metric([name, phase], 1 if phase == status.phase else 0)
            if status.exports:
                gauges["exports"].add_metric([name], 1 if status.exports.get("in_sync") else 0)
                for export, counters in (status.exports.get("stats") or {}).items():
                    for key, family in io.items():
                        value = counters.get(key, 0)
                        family.add_metric([name, export], value / 1e9 if key == "latency_ns" else value)
                for address, counters in (status.exports.get("clients") or {}).items():
                    clients.setdefault(address, counters)
            errors.add_metric([name], status.errors)
        yield from gauges.values()
        yield errors
        yield from io.values()
        for address, counters in sorted(clients.items()):
            for key, family in per_client.items():
                value = counters.get(key, 0)
                family.add_metric([address], value / 1e9 if key == "latency_ns" else value)
        yield from per_client.values()
        if report.ganesha is not None:
            restarts = CounterMetricFamily("bsud_ganesha_restarts", "Times the nfs-ganesha bsud runs itself ended "
                                           "or hung and was started again (nfs.ganesha.managed)")
            restarts.add_metric([], report.ganesha.get("restarts", 0))
            yield restarts
            running = GaugeMetricFamily("bsud_ganesha_running", "1 while the nfs-ganesha bsud runs itself is "
                                        "running and sends its heartbeat, 0 while it starts, waits or restarts")
            running.add_metric([], 1 if str(report.ganesha.get("state", "")).startswith("running") else 0)
            yield running


class Metrics:
    """A report sink, an event listener and the cloud's request observer, in one registry."""

    def __init__(self, textfile: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.report: DaemonReport | None = None
        self.textfile = textfile
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
        self._server: object | None = None
        self._textfile_failed = False
        self._lock = threading.Lock()

    # -- feeds ------------------------------------------------------------------------------------

    def publish(self, report: DaemonReport) -> None:
        self.report = report
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
        """Atomically (a temp file renamed over it), as node_exporter's textfile collector wants."""
        with self._lock:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                write_to_textfile(path, self.registry)
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
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("serving metrics", listen=listen)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
