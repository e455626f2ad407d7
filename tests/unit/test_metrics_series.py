"""The series bsud exposes, scraped for real (prometheus_client's registry, its parser, its HTTP server): names by
Prometheus' naming guide and their deprecated aliases, timestamps that show a stale report, counters that exist
from zero, the process's series on the served endpoint only, and NFS clients bounded to the top N plus "other"."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bsud.client_series import CLIENT_KEYS, MAX_CLIENT_SERIES, OTHER_CLIENTS, ClientSeries
from bsud.metrics import DEPRECATED, Metrics
from bsud.reconcile.events import Event
from bsud.reconcile.report import DriveStatus
from bsud.sinks import DaemonReport

from ..metrics_fixture import exports_obs, full_metrics, full_report, sample_names, scrape

#: Units of the naming guide's base-unit table that bsud uses, and non-base units it must not use.
UNITS = ("seconds", "bytes", "ratio", "bytes_per_second")
NOT_BASE = ("milliseconds", "microseconds", "nanoseconds", "minutes", "hours", "days", "kilobytes", "megabytes",
            "gigabytes", "kib", "mib", "gib", "percent", "perc", "ms", "ns", "sec")


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_family_follows_the_naming_guide():
    """Counters end in _total; a unit is a base unit and comes last (before _total); info metrics end in _info
    and are 1; every family has a help text. Deprecated aliases are the only exceptions, and say so."""
    text = scrape(full_metrics().served)
    found = families(text)
    assert len(found) > 30
    for name, family in found.items():
        assert family.documentation, f"{name} has no HELP"
        words = name.split("_")
        assert not set(words) & set(NOT_BASE), f"{name}: not a base unit"
        samples = {s.name for s in family.samples}
        if family.type == "counter":
            assert samples == {name + "_total"}, f"{name}: a counter's samples {samples}"
        if family.type in ("gauge", "counter") and name not in DEPRECATED:
            inner = [u for u in UNITS if re.search(rf"_{u}_", name + "_")]
            assert all(name.endswith("_" + u) or name.endswith("_" + u + "_per_second") for u in inner), \
                f"{name}: the unit ({inner}) is not last"
        if name.endswith("_info"):
            assert family.type == "gauge" and {s.value for s in family.samples} == {1}
    assert not [n for n in sample_names(text) if n.endswith("_created")], "the _created series are left out"


def test_a_renamed_series_keeps_its_old_name_with_the_same_value_and_says_it_is_deprecated():
    text = scrape(full_metrics().registry)
    got, found = values(text), families(text)
    for old, new in DEPRECATED.items():
        assert new in found and old in found
        assert found[old].documentation == f"deprecated: use {new}; removed in the next release"
        old_samples = {labels: v for (n, labels), v in got.items() if n == old}
        assert old_samples and old_samples == {labels: v for (n, labels), v in got.items() if n == new}


def test_the_report_and_each_drive_carry_timestamps_that_show_staleness():
    before = time.time()
    report = full_report(now=before)
    m = Metrics()
    m.publish(report)
    got = values(scrape(m.registry))
    assert got[("bsud_last_report_timestamp_seconds", ())] == report.updated
    for name, status in report.drives.items():
        assert got[("bsud_drive_last_observed_timestamp_seconds", (("drive", name),))] == status.updated
    # The daemon goes on: the next report moves the timestamp; a stopped daemon's textfile keeps the old one.
    later = DaemonReport(**{**report.__dict__, "updated": before + 60})
    m.publish(later)
    assert values(scrape(m.registry))[("bsud_last_report_timestamp_seconds", ())] == before + 60


def test_drive_gauges_for_the_rules_metadata_grow_time_and_notes():
    got = values(scrape(full_metrics().registry))
    assert got[("bsud_drive_metadata_used_ratio", (("drive", "data"),))] == pytest.approx(0.425)
    assert got[("bsud_drive_grow_estimate_seconds", (("drive", "data"),))] == 61.5
    assert got[("bsud_drive_notes", (("drive", "data"),))] == 1
    assert got[("bsud_drive_notes", (("drive", "logs"),))] == 0


def test_scale_event_counters_exist_from_zero_for_every_drive():
    """increase() misses a counter's first increment when the series appears at 1; and "started but not done"
    needs the done series before the first done."""
    m = Metrics()
    m.publish(DaemonReport(version="t", pid=1, config="c", started=0, updated=0, unmanaged={},
                           drives={"data": DriveStatus("data", "online", "lvm", "/data")}))
    got = values(scrape(m.registry))
    zero = {(dict(labels)["direction"], dict(labels)["result"]) for (name, labels), v in got.items()
            if name == "bsud_scale_events_total" and v == 0 and dict(labels)["drive"] == "data"}
    assert {("up", "started"), ("up", "done"), ("up", "failed"), ("down", "started"), ("down", "done"),
            ("down", "abandoned")} <= zero
    m.event(Event("scale-up", "data", result="started"))
    got = values(scrape(m.registry))
    assert got[("bsud_scale_events_total", (("direction", "up"), ("drive", "data"), ("result", "started")))] == 1
    assert got[("bsud_scale_events_total", (("direction", "up"), ("drive", "data"), ("result", "done")))] == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_served_endpoint_has_the_process_series_and_the_textfile_has_not(tmp_path: Path):
    prom = tmp_path / "bsud.prom"
    m = full_metrics(textfile=str(prom))
    port = free_port()
    m.serve(f"127.0.0.1:{port}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            served = answer.read().decode()
    finally:
        m.close()
    m.write_textfile(str(prom))  # the events came after the publish that wrote it
    written = prom.read_text()
    served_names, written_names = sample_names(served), sample_names(written)
    process = {n for n in served_names if n.startswith("process_")}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds",
            "process_open_fds"} <= process
    assert not [n for n in written_names if n.startswith("process_")]
    assert served_names - process == written_names  # otherwise the same series


# -- NFS clients: at most MAX_CLIENT_SERIES of their own, plus "other" -------------------------------------------


def client(read: float, write: float = 0, requests: float = 0) -> dict[str, float]:
    return {"read_bytes": read, "write_bytes": write, "requests": requests, "errors": 0, "latency_ns": 0}


def test_the_top_clients_by_bytes_have_series_and_the_rest_is_summed_in_other():
    clients = {f"10.0.{n // 256}.{n % 256}": client(n * 100, n, n) for n in range(1, 1001)}
    series = ClientSeries()
    shown, other = series.update(clients, now=0)
    assert len(shown) == MAX_CLIENT_SERIES
    biggest = sorted(clients, key=lambda a: -(clients[a]["read_bytes"] + clients[a]["write_bytes"]))
    assert set(shown) == set(biggest[:MAX_CLIENT_SERIES])
    rest = biggest[MAX_CLIENT_SERIES:]
    assert other == {k: sum(clients[a][k] for a in rest) for k in CLIENT_KEYS}


def test_the_metrics_show_at_most_n_plus_other_per_family():
    text = scrape(full_metrics().registry)  # 29 clients
    per_family = {}
    for (name, labels), _ in values(text).items():
        if name.startswith("bsud_nfs_client_"):
            per_family.setdefault(name, set()).add(dict(labels)["client"])
    assert len(per_family) == 5
    for addresses in per_family.values():
        assert len(addresses) == MAX_CLIENT_SERIES + 1 and OTHER_CLIENTS in addresses


def run(series: ClientSeries, reports: list[tuple[float, dict[str, dict[str, float]]]]) -> list[dict]:
    """Each report's series: client (or "other") → counters."""
    seen = []
    for now, clients in reports:
        shown, other = series.update(clients, now)
        seen.append({**shown, **({OTHER_CLIENTS: other} if other is not None else {})})
    return seen


def assert_monotonic(seen: list[dict]) -> None:
    """A series that exists in two successive reports never went down (what rate() needs)."""
    for before, after in zip(seen, seen[1:], strict=False):
        for name in before.keys() & after.keys():
            for key in CLIENT_KEYS:
                assert after[name][key] >= before[name][key], f"{name} {key} went down"


def test_a_client_overtaken_keeps_its_series_and_other_never_goes_down():
    series = ClientSeries(limit=2)
    reports = [
        (0, {"a": client(500), "b": client(400), "c": client(10), "d": client(5)}),
        # c overtakes both: a and b still move, so they keep their places; c's bytes go to other.
        (60, {"a": client(510), "b": client(410), "c": client(9000), "d": client(5)}),
        # b leaves the server: c, the biggest waiting, takes its place — and other does not fall by c's 9000.
        (120, {"a": client(520), "c": client(9500), "d": client(6)}),
        (180, {"a": client(530), "c": client(9600), "d": client(7), "e": client(50)}),
    ]
    seen = run(series, reports)
    assert set(seen[0]) == {"a", "b", OTHER_CLIENTS} and seen[0][OTHER_CLIENTS]["read_bytes"] == 15
    assert set(seen[1]) == {"a", "b", OTHER_CLIENTS} and seen[1][OTHER_CLIENTS]["read_bytes"] == 15 + 8990
    assert set(seen[2]) == {"a", "c", OTHER_CLIENTS} and seen[2][OTHER_CLIENTS]["read_bytes"] == 15 + 8990 + 1
    assert seen[3][OTHER_CLIENTS]["read_bytes"] == 15 + 8990 + 1 + 1 + 50  # d moved 1, e is new with 50
    assert seen[2]["c"]["read_bytes"] == 9500  # its own series: the server's counter
    assert_monotonic(seen)


def test_an_idle_client_gives_its_place_to_a_busy_one_after_the_idle_time():
    series = ClientSeries(limit=1, idle=3600)
    seen = run(series, [
        (0, {"quiet": client(1000), "busy": client(10)}),
        (1800, {"quiet": client(1000), "busy": client(500)}),   # quiet for 30 min: keeps its place
        (3600, {"quiet": client(1000), "busy": client(900)}),   # quiet for an hour, busy waits: busy takes it
        (3660, {"quiet": client(1200), "busy": client(950)}),   # quiet moves again: its bytes now go to other
    ])
    assert [set(s) - {OTHER_CLIENTS} for s in seen] == [{"quiet"}, {"quiet"}, {"busy"}, {"busy"}]
    # busy's own series counts its bytes from then on (900, then 950), other no longer does
    assert [s[OTHER_CLIENTS]["read_bytes"] for s in seen] == [10, 500, 500, 700]
    assert_monotonic(seen)


def test_a_server_restart_resets_the_clients_but_not_other():
    series = ClientSeries(limit=1)
    seen = run(series, [
        (0, {"a": client(1000), "b": client(100)}),
        (60, {"a": client(1100), "b": client(300)}),
        (120, {"a": client(5), "b": client(2)}),  # nfs-ganesha restarted: every counter from 0
    ])
    assert [s[OTHER_CLIENTS]["read_bytes"] for s in seen] == [100, 300, 302]
    assert seen[2]["a"]["read_bytes"] == 5  # a's own counter resets, as any counter (rate() handles it)


def test_no_client_series_while_no_drive_reports_clients_and_other_resumes_where_it_was():
    series = ClientSeries(limit=1)
    seen = run(series, [(0, {"a": client(10), "b": client(7)}), (60, {}), (120, {"a": client(20), "b": client(9)})])
    assert seen[1] == {}
    assert seen[2][OTHER_CLIENTS]["read_bytes"] == 9


def test_drives_sharing_the_server_give_each_client_its_latest_count():
    """Each drive's status has the clients as its own last step saw them: the higher count is the fresher."""
    def drive(name: str, read: float) -> DriveStatus:
        return DriveStatus(name, "online", "lvm", f"/{name}", exports=exports_obs({
            "wanted": 1, "in_sync": True, "servers": [], "detail": "", "clients": {"10.0.0.5": client(read)}}))

    m = Metrics()
    m.publish(DaemonReport(version="t", pid=1, config="c", started=0, updated=0, unmanaged={},
                           drives={"one": drive("one", 900), "two": drive("two", 1000)}))
    got = values(scrape(m.registry))
    assert got[("bsud_nfs_client_read_bytes_total", (("client", "10.0.0.5"),))] == 1000


def test_the_textfile_is_readable_by_node_exporter_whatever_bsuds_umask(tmp_path):
    """The unit runs bsud with UMask=0077; node_exporter reads the textfile as its own user."""
    import os
    import stat

    from bsud.metrics import Metrics

    old = os.umask(0o077)
    try:
        path = tmp_path / "node-exporter" / "bsud.prom"
        Metrics(str(path)).write_textfile(str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert "bsud_build_info" in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["bsud.prom"]  # no temp file left


def test_a_highly_available_drive_shows_its_drbd_role_connection_disks_and_sizes():
    text = scrape(full_metrics().registry)
    seen = values(text)
    assert seen[("bsud_drbd_role", (("drive", "ha-a"), ("role", "Primary")))] == 1
    assert seen[("bsud_drbd_role", (("drive", "ha-a"), ("role", "Secondary")))] == 0
    assert seen[("bsud_drbd_connected", (("drive", "ha-a"),))] == 1
    assert seen[("bsud_drbd_disk_up_to_date", (("drive", "ha-a"), ("node", "peer")))] == 1
    assert seen[("bsud_drbd_size_bytes", (("drive", "ha-a"),))] == 10 * 1024**3
    assert seen[("bsud_drbd_backing_bytes", (("drive", "ha-a"),))] == 22 * 1024**3
    assert seen[("bsud_drbd_peer_volumes_bytes", (("drive", "ha-a"),))] == 22 * 1024**3
    assert not any(name.startswith("bsud_drbd") and dict(labels).get("drive") == "data" for name, labels in seen)
    status = full_report().drives["ha-a"].as_dict()
    assert status["replication"]["role"] == "Primary" and status["replication"]["peer_drive"] == "ha-b"
    assert status["replication"]["room_bytes"] > 11 * 1024**3 and "peer" not in status
