"""A :class:`bsud.metrics.Metrics` fed everything it can show: drives mounted and not, writing, blocked, with
exports, their I/O counters and NFS clients, a managed nfs-ganesha, scale events of both directions and every
result, cloud requests. What the docs table, the shipped rules and the dashboard are checked against."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bsud.metrics import Metrics
from bsud.reconcile.events import Event
from bsud.reconcile.model import ExportsObs, VolumeObs
from bsud.reconcile.report import DriveStatus
from bsud.sinks import DaemonReport

GIB = 1 << 30


def exports_obs(data: dict) -> ExportsObs:
    """A drive's exports as observed, written as the status file shows them."""
    return ExportsObs(wanted=data.get("wanted", 0), names=tuple(data.get("names", ())), in_sync=data["in_sync"],
                      servers=tuple(data.get("servers", ())), detail=data.get("detail", ""),
                      stats=tuple((n, tuple(c.items())) for n, c in data.get("stats", {}).items()),
                      clients=tuple((a, tuple(c.items())) for a, c in data.get("clients", {}).items()))


def volume_list(entries: list[dict]) -> tuple[VolumeObs, ...]:
    return tuple(VolumeObs(id=e["id"], size_gib=e.get("size_gib", 1), state=e.get("state", "in-use")) for e in entries)


def full_report(now: float | None = None) -> DaemonReport:
    now = time.time() if now is None else now
    clients = {f"10.0.0.{n}": {"read_bytes": n * 1000, "write_bytes": n * 10, "requests": n, "errors": 0,
                               "latency_ns": n * 1e6} for n in range(1, 30)}
    data = DriveStatus("data", "online", "lvm", "/data", phase="scaling-up", action="CreateVolume",
                       reason="full in 120 s", size_gib=20, used_percent=91.0, size_bytes=20 * GIB,
                       used_bytes=18 * GIB, metadata_used_percent=42.5, write_rate=80e6, seconds_to_full=25.0,
                       grow_seconds=61.5, volumes=volume_list([{"id": "vol-1"}, {"id": "vol-2"}]),
                       notes=["used 91.0% >= 85%, but max-bsu-count (2) is reached"], errors=2, updated=now - 3,
                       exports=exports_obs({"wanted": 2, "names": ["nfs:/data", "nfs:/data/b"], "in_sync": True,
                                "servers": ["nfs-ganesha: ready"], "detail": "",
                                "stats": {"nfs:/data": {"read_bytes": 4096, "write_bytes": 1 << 20, "requests": 40,
                                                        "errors": 1, "latency_ns": 2_500_000_000},
                                          "nfs:/data/b": {}},
                                "clients": clients}))
    logs = DriveStatus("logs", "online", "btrfs", "/logs", phase="blocked", reason="volume vol-9 is attached to i-2",
                       last_error="volume vol-9 is attached to i-2", errors=7, updated=now - 40,
                       exports=exports_obs({"wanted": 1, "names": ["nfs:/logs"], "in_sync": False, "servers": [],
                                "detail": "not applied", "clients": clients}))
    from bsud.reconcile.model import PeerObs, PeerVolume
    from bsud.storage import Replication

    ha = DriveStatus("ha-a", "online", "lvm", "/srv/ha", phase="online", updated=now - 2,
                     replication=Replication("r0", device="/dev/drbd1000", up=True, role="Primary",
                                             peer_role="Secondary", connection="Connected", disk="UpToDate",
                                             peer_disk="UpToDate", size=10 * GIB, backing_size=22 * GIB),
                     peer=PeerObs("ha-b", (PeerVolume("vol-b0", 10, "in-use", attached_to="i-b"),
                                           PeerVolume("vol-b1", 12, "in-use", attached_to="i-b")), "i-b"))
    return DaemonReport(version="t", pid=1, config="/etc/bsud/config.json", started=now - 3600, updated=now,
                        drives={"data": data, "logs": logs, "ha-a": ha}, unmanaged={}, not_mounted=("logs",),
                        ganesha={"state": "running, pid 9", "pid": 9, "restarts": 1})


def full_metrics(textfile: str | None = None) -> Metrics:
    m = Metrics(textfile=textfile)
    m.publish(full_report())
    for result, duration in (("started", None), ("failed", 3.0), ("done", 95.0)):
        m.event(Event("scale-up", "data", result=result, duration=duration))
    for result, duration in (("started", None), ("abandoned", 30.0), ("started", None), ("done", 400.0)):
        m.event(Event("scale-down", "data", result=result, duration=duration))
    m.cloud_request("CreateVolume", "OK", throttled=False)
    m.cloud_request("DescribeVolumes", "RequestLimitExceeded", throttled=True)
    return m


def scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def sample_names(text: str) -> set[str]:
    """Every sample name in an exposition (``_total``, ``_bucket``, ``_sum``, ``_count`` as Prometheus stores
    them)."""
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}
