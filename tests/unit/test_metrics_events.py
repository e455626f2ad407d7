"""The metrics sink on a report made by hand (parsed back with prometheus_client's parser), and the on-event
command run for real (a script; timeout, failure, the environment it gets)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bsud.logs import register_secrets
from bsud.metrics import Metrics
from bsud.reconcile.events import Event
from bsud.reconcile.report import DriveStatus
from bsud.sinks import DaemonReport, EventCommand

from ..metrics_fixture import exports_obs, full_metrics, sample_names, scrape, volume_list


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def report(*drives: DriveStatus) -> DaemonReport:
    return DaemonReport(version="t", pid=1, config="c", started=0, updated=0, drives={d.name: d for d in drives},
                        unmanaged={})


def test_drive_gauges_follow_the_report_and_a_removed_drive_disappears():
    writing = DriveStatus("data", "online", "lvm", "/data", phase="scaling-up", size_bytes=10 << 30,
                          used_bytes=9 << 30, write_rate=50e6, seconds_to_full=21.5, errors=3,
                          volumes=volume_list([{"id": "vol-1"}, {"id": "vol-2"}]))
    stuck = DriveStatus("logs", "online", "btrfs", "/logs", phase="blocked",
                        exports=exports_obs({"wanted": 1, "in_sync": False, "servers": [], "detail": "x"}))
    m = Metrics()
    m.publish(report(writing, stuck))
    got = samples(generate_latest(m.registry).decode())
    assert got[key("bsud_drive_size_bytes", drive="data")] == 10 << 30
    assert got[key("bsud_drive_used_bytes", drive="data")] == 9 << 30
    assert got[key("bsud_drive_volumes", drive="data")] == 2
    assert got[key("bsud_drive_write_rate_bytes_per_second", drive="data")] == 50e6
    assert got[key("bsud_drive_time_to_full_seconds", drive="data")] == 21.5
    assert got[key("bsud_drive_seconds_to_full", drive="data")] == 21.5  # the deprecated alias, one more release
    assert got[key("bsud_step_errors_total", drive="data")] == 3
    assert got[key("bsud_drive_phase", drive="data", phase="scaling-up")] == 1
    assert got[key("bsud_drive_phase", drive="data", phase="online")] == 0
    assert got[key("bsud_drive_blocked", drive="logs")] == 1 and got[key("bsud_drive_blocked", drive="data")] == 0
    assert got[key("bsud_drive_exports_applied", drive="logs")] == 0
    assert key("bsud_drive_exports_applied", drive="data") not in got  # no exports: no series
    # Not mounted, not writing: no size, no seconds-to-full (absent, not zero).
    assert key("bsud_drive_size_bytes", drive="logs") not in got
    assert key("bsud_drive_time_to_full_seconds", drive="logs") not in got
    assert key("bsud_drive_seconds_to_full", drive="logs") not in got
    assert key("bsud_drive_metadata_used_ratio", drive="logs") not in got
    assert key("bsud_drive_last_observed_timestamp_seconds", drive="logs") not in got  # never observed yet
    assert not any("vol-" in str(labels) for _, labels in got), "a volume id became a label"
    m.publish(report(writing))
    assert key("bsud_drive_blocked", drive="logs") not in samples(generate_latest(m.registry).decode())


def test_scale_events_and_cloud_requests_are_counted():
    m = Metrics()
    m.event(Event("scale-up", "data", result="started"))
    m.event(Event("scale-up", "data", result="done", duration=42.0))
    m.event(Event("blocked", "data", reason="x"))  # not a scale event
    m.cloud_request("DescribeVolumes", "OK", False)
    m.cloud_request("CreateVolume", "RequestLimitExceeded", True)
    got = samples(generate_latest(m.registry).decode())
    assert got[key("bsud_scale_events_total", drive="data", direction="up", result="started")] == 1
    assert got[key("bsud_scale_events_total", drive="data", direction="up", result="done")] == 1
    assert got[key("bsud_scale_duration_seconds_sum", drive="data", direction="up")] == 42.0
    assert got[key("bsud_scale_duration_seconds_bucket", drive="data", direction="up", le="30.0")] == 0
    assert got[key("bsud_scale_duration_seconds_bucket", drive="data", direction="up", le="45.0")] == 1
    assert got[key("bsud_cloud_requests_total", action="CreateVolume", code="RequestLimitExceeded")] == 1
    assert got[key("bsud_cloud_throttled_total")] == 1


def test_the_textfile_is_replaced_whole_and_a_failure_does_not_raise(tmp_path: Path):
    target = tmp_path / "node-exporter" / "bsud.prom"
    m = Metrics(textfile=str(target))
    m.publish(report(DriveStatus("data", "online", "lvm", "/data", phase="online")))
    assert samples(target.read_text())[key("bsud_drive_phase", drive="data", phase="online")] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["bsud.prom"]  # no temp file left
    blocked = tmp_path / "file"
    blocked.write_text("")
    Metrics(textfile=str(blocked / "bsud.prom")).publish(report())  # its directory is a file: logged, not raised


HOOK = """#!{python}
import json, os, sys, time
if os.environ.get("BSUD_REASON") == "sleep":
    time.sleep(30)
with open({log!r}, "a") as out:
    out.write(json.dumps(dict(os.environ)) + "\\n")
sys.exit(3 if os.environ.get("BSUD_REASON") == "fail" else 0)
"""


@pytest.fixture
def hook(tmp_path: Path) -> tuple[Path, Path]:
    script, log = tmp_path / "hook", tmp_path / "events.jsonl"
    script.write_text(HOOK.format(python=sys.executable, log=str(log)))
    script.chmod(0o755)
    return script, log


def test_the_command_gets_the_facts_and_not_the_credentials(hook, monkeypatch):
    script, log = hook
    monkeypatch.setenv("OSC_SECRET_KEY", "s3cr3t-value")
    monkeypatch.setenv("HARMLESS", "token-free text holding s3cr3t-value-registered")
    register_secrets(["s3cr3t-value-registered"])
    command = EventCommand((str(script),), timeout=10)
    assert command.run(Event("scale-up", "data", result="done", volume="vol-1", volume_gib=12)) == 0
    (env,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (env["BSUD_EVENT"], env["BSUD_DRIVE"], env["BSUD_VOLUME_GIB"]) == ("scale-up", "data", "12")
    assert "OSC_SECRET_KEY" not in env and "HARMLESS" not in env
    assert env["PATH"] == os.environ["PATH"]
    command.close()


def test_a_failing_or_hanging_command_is_logged_and_killed(hook, capsys):
    script, log = hook
    command = EventCommand((str(script),), timeout=0.5)
    assert command.run(Event("blocked", "data", reason="fail")) == 3
    started = time.monotonic()
    assert command.run(Event("blocked", "data", reason="sleep")) is None
    assert time.monotonic() - started < 10
    command.close()


def test_events_are_queued_and_run_in_order_without_waiting(hook):
    script, log = hook
    command = EventCommand((str(script),), timeout=10)
    started = time.monotonic()
    for n in range(3):
        command(Event("scale-up", "data", result="started", volume=f"vol-{n}"))
    assert time.monotonic() - started < 0.5  # the caller (a drive) never waits for the command
    command.close(wait=20)
    assert [json.loads(line)["BSUD_VOLUME"] for line in log.read_text().splitlines()] == ["vol-0", "vol-1", "vol-2"]


def test_the_documented_webhook_example_posts_the_event(tmp_path: Path, monkeypatch):
    """docs/examples/on-event-webhook, run by EventCommand against a local HTTP server."""
    import http.server
    import threading

    posted: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url_file = tmp_path / "webhook"
    url_file.write_text(f"http://127.0.0.1:{server.server_port}/hooks/x\n")
    monkeypatch.setenv("BSUD_WEBHOOK_FILE", str(url_file))
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "on-event-webhook"
    command = EventCommand((str(example),), timeout=30)
    try:
        assert command.run(Event("scale-up", "data", result="started")) == 0  # not posted
        assert command.run(Event("scale-up", "data", result="done", volume="vol-9", volume_gib=12, drive_gib=22,
                                 duration=31.2)) == 0
        assert command.run(Event("blocked", "data", reason="volume vol-1 is attached to i-2")) == 0
    finally:
        command.close()
        server.shutdown()
    assert [p["text"].split(": ", 1)[1] for p in posted] == [
        "drive data: scale-up done, volume vol-9 (12 GiB) in 31 s; the drive has 22 GiB of volumes",
        "drive data: blocked\nvolume vol-1 is attached to i-2",
    ]


def test_an_exports_io_counters_become_counters_per_drive_and_export():
    served = DriveStatus("data", "online", "lvm", "/data", phase="online", exports=exports_obs({
        "wanted": 2, "in_sync": True, "servers": ["nfs-ganesha: ready"], "detail": "",
        "stats": {"nfs:a": {"read_bytes": 4096, "write_bytes": 1 << 20, "requests": 40, "errors": 1,
                            "latency_ns": 2_500_000_000}, "nfs:b": {}}}))
    m = Metrics()
    m.publish(report(served))
    got = samples(generate_latest(m.registry).decode())
    assert got[key("bsud_export_read_bytes_total", drive="data", export="nfs:a")] == 4096
    assert got[key("bsud_export_write_bytes_total", drive="data", export="nfs:a")] == 1 << 20
    assert got[key("bsud_export_requests_total", drive="data", export="nfs:a")] == 40
    assert got[key("bsud_export_errors_total", drive="data", export="nfs:a")] == 1
    assert got[key("bsud_export_latency_seconds_total", drive="data", export="nfs:a")] == 2.5
    assert got[key("bsud_export_write_bytes_total", drive="data", export="nfs:b")] == 0


def test_nfs_clients_counters_are_per_client_once_whatever_the_drives_sharing_the_server():
    clients = {"10.0.0.5": {"read_bytes": 10, "write_bytes": 20, "requests": 3, "errors": 0, "latency_ns": 5e8}}
    drives = [DriveStatus(name, "online", "lvm", f"/{name}", phase="online", exports=exports_obs({
        "wanted": 1, "in_sync": True, "servers": ["nfs-ganesha: ready"], "detail": "", "clients": clients}))
        for name in ("one", "two")]
    m = Metrics()
    m.publish(report(*drives))
    text = generate_latest(m.registry).decode()
    got = samples(text)
    assert got[key("bsud_nfs_client_write_bytes_total", client="10.0.0.5")] == 20
    assert got[key("bsud_nfs_client_latency_seconds_total", client="10.0.0.5")] == 0.5
    assert text.count('bsud_nfs_client_read_bytes_total{client="10.0.0.5"}') == 1


def test_the_managed_ganesha_has_a_restarts_counter_and_a_running_gauge_only_when_bsud_runs_one():
    m = Metrics()
    m.publish(report())
    assert not any(name.startswith("bsud_ganesha") for name, _ in samples(generate_latest(m.registry).decode()))
    waiting = DaemonReport(version="t", pid=1, config="c", started=0, updated=0, drives={}, unmanaged={},
                           ganesha={"state": "restarting in 4 s (exited with code 2)", "pid": None, "restarts": 3})
    m.publish(waiting)
    got = samples(generate_latest(m.registry).decode())
    assert got[key("bsud_ganesha_restarts_total")] == 3 and got[key("bsud_ganesha_running")] == 0
    assert waiting.as_dict()["ganesha"]["restarts"] == 3  # and in the status file


def test_every_series_bsud_exposes_is_in_the_monitoring_docs_table():
    m = full_metrics()
    table = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text()
    exposed = {name for name in sample_names(scrape(m.served)) if not name.endswith(("_bucket", "_count", "_sum"))}
    assert len(exposed) > 30 and any(name.startswith("process_") for name in exposed)
    missing = sorted(name for name in exposed if f"| `{name}` |" not in table and f"`{name}`" not in table)
    assert not missing, f"not in docs/monitoring.md: {missing}"
