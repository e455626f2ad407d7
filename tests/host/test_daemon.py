"""The daemon as a process, local provider, btrfs layout, real loop devices: the whole lifecycle."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bsud.cloud import make_provider
from bsud.config import load_config

from .daemon_harness import DaemonHarness, checksums

pytestmark = pytest.mark.host


@pytest.fixture
def harness(workdir: Path):
    h = DaemonHarness(workdir)
    yield h
    h.close()


HOOK = """#!{python}
import json, os, sys
with open({log!r}, "a") as out:
    out.write(json.dumps({{k: v for k, v in os.environ.items() if k.startswith(("BSUD_", "OSC_"))}}) + "\\n")
"""


def results_of(log: Path, kind: str, until: str = "done", timeout: float = 30) -> list[dict[str, str]]:
    """The on-event command's record of ``kind`` events (it runs beside the drive: wait for ``until``); a
    step that failed and was retried is not part of the sequence asserted."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        found = [e for e in map(json.loads, lines) if e["BSUD_EVENT"] == kind and e["BSUD_RESULT"] != "failed"]
        if any(e["BSUD_RESULT"] == until for e in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def sample(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def scraped(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed with prometheus_client's own parser: (sample name, labels) → value."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_lifecycle(workdir: Path):
    """Online, scale up, scale down, offline, a refused reload, online, delete — with the metrics served and
    written, and the on-event command told of each scale event."""
    hook, hook_log, prom = workdir / "hook", workdir / "events.jsonl", workdir / "textfile" / "bsud.prom"
    hook.write_text(HOOK.format(python=sys.executable, log=str(hook_log)))
    hook.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    h = DaemonHarness(workdir, daemon={"metrics-listen": f"127.0.0.1:{port}", "metrics-textfile": str(prom),
                                       "on-event": [str(hook)]}, tags={"team": "storage"})
    try:
        lifecycle(h, f"http://127.0.0.1:{port}/metrics", hook_log, prom)
    finally:
        h.close()


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket the daemon is given as NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout: float = 120) -> list[str]:
        """Messages until one holding ``field`` (e.g. READY=1); those received so far."""
        deadline = time.monotonic() + timeout
        while not any(field in m.split("\n") for m in self.messages):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {field} within {timeout} s; got {self.messages}"
            self.sock.settimeout(remaining)
            self.messages.append(self.sock.recv(65536).decode())
        return self.messages

    def close(self) -> None:
        self.sock.close()


def lifecycle(h: DaemonHarness, url: str, hook_log: Path, prom: Path) -> None:
    notify = NotifySocket(h.workdir / "notify")
    h.start(OSC_SECRET_KEY="never-in-a-hook", NOTIFY_SOCKET=notify.path)
    # READY=1 only once the drive is mounted: a unit ordered After=bsud.service starts on it, not on an empty
    # directory.
    notify.wait_for("READY=1")
    assert h.mounted(), "READY=1 came before the drive was mounted"
    notify.close()
    st = h.wait_online(volumes=1)
    assert st["size_gib"] == 1 and h.mounted()
    m = scraped(url)
    drive = h.drive
    assert m[sample("bsud_drive_volumes", drive=drive)] == 1 and m[sample("bsud_drive_blocked", drive=drive)] == 0
    assert m[sample("bsud_drive_phase", drive=drive, phase="online")] == 1
    assert m[sample("bsud_drive_phase", drive=drive, phase="scaling-up")] == 0
    assert 0 < m[sample("bsud_drive_size_bytes", drive=drive)] <= 1 << 30
    assert any(name == "bsud_build_info" for name, _ in m)
    # A real daemon's timestamps are fresh, its btrfs metadata share and grow time are there; the served endpoint
    # has the process's series, the textfile (node_exporter's) has not.
    now = time.time()
    assert now - 60 < m[sample("bsud_last_report_timestamp_seconds")] <= now + 1
    assert now - 120 < m[sample("bsud_drive_last_observed_timestamp_seconds", drive=drive)] <= now + 1
    assert 0 < m[sample("bsud_drive_metadata_used_ratio", drive=drive)] < 1
    assert m[sample("bsud_drive_grow_estimate_seconds", drive=drive)] > 0
    assert m[sample("process_resident_memory_bytes")] > 0
    assert "process_resident_memory_bytes" not in prom.read_text()

    h.fill("a.bin", 400)
    h.fill("b.bin", 480)
    sums = checksums(h.mount)
    st = h.wait_online(volumes=2)
    # 1 GiB + at least the classic larger volume (1 × 1.2 → 2 GiB); dd writes fast enough that the new volume
    # is sized for its rate, within max-total-size-gib (8).
    assert 3 <= st["size_gib"] <= 8
    assert st["used_percent"] < 85
    assert checksums(h.mount) == sums
    # The scale-up as events (on-event, status) and metrics (served, and the textfile node_exporter reads).
    st = h.wait_for("scale-up done", lambda s: (s.get("last_scale_event") or {}).get("result") == "done")
    up = results_of(hook_log, "scale-up")
    assert [e["BSUD_RESULT"] for e in up] == ["started", "done"], up
    assert up[1]["BSUD_DRIVE"] == h.drive and up[1]["BSUD_VOLUME"].startswith("vol-")
    assert float(up[1]["BSUD_DURATION_SECONDS"]) > 0 and int(up[1]["BSUD_VOLUME_GIB"]) == st["size_gib"] - 1
    assert not any(k.startswith("OSC_") for e in up for k in e), "the daemon's credentials reached the hook"
    m = scraped(url)
    assert m[sample("bsud_scale_events_total", drive=drive, direction="up", result="done")] == 1
    assert m[sample("bsud_scale_duration_seconds_count", drive=drive, direction="up")] == 1
    assert m[sample("bsud_drive_volumes", drive=drive)] == 2
    written = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(prom.read_text()) for s in f.samples}
    assert written[sample("bsud_drive_volumes", drive=drive)] == 2
    # The drive's extra tags are on every volume bsud made for it.
    volumes = make_provider(load_config(h.config_path)).list_volumes()
    assert len(volumes) == 2 and all(v.tags.get("team") == "storage" for v in volumes), volumes
    shown = subprocess.run([sys.executable, "-m", "bsud", "status", "-c", str(h.config_path)], capture_output=True,
                           text=True, timeout=60).stdout
    assert f"last scale event: scale-up done" in shown and up[1]["BSUD_VOLUME"] in shown, shown

    (h.mount / "a.bin").unlink()
    (h.mount / "b.bin").unlink()
    h.fill("c.bin", 100)
    sums = checksums(h.mount)
    st = h.wait_for("scale-down to one volume", lambda s: s.get("phase") == "online" and len(s["volumes"]) == 1,
                    timeout=180)
    assert st["size_gib"] == 1
    assert checksums(h.mount) == sums
    assert len(h.images()) == 1 and len(h.loops()) == 1
    # One volume removed per scale-down (two, when the fill had needed a third volume).
    down = [e["BSUD_RESULT"] for e in results_of(hook_log, "scale-down")]
    assert down in (["started", "done"], ["started", "done"] * 2), down
    counted = scraped(url)[sample("bsud_scale_events_total", drive=drive, direction="down", result="done")]
    assert counted == down.count("done")

    h.write_config(target="offline")
    h.signal(signal.SIGHUP)
    h.wait_for("offline", lambda s: s.get("phase") == "offline")
    assert not h.mounted() and h.loops() == []

    # A broken config on SIGHUP is refused; the daemon keeps running with the old one.
    good = h.config_path.read_text()
    h.config_path.write_text('{"drives": [{"name": "x"')
    h.signal(signal.SIGHUP)
    h.wait_for("refusal logged", lambda s: "config reload refused" in h.tail(200) or False, timeout=30)
    assert h.alive()
    h.config_path.write_text(good)

    h.write_config(target="online")
    h.signal(signal.SIGHUP)
    h.wait_online(volumes=1)
    assert checksums(h.mount) == sums

    h.write_config(target="delete")
    h.signal(signal.SIGHUP)
    h.wait_for("deleted", lambda s: s.get("phase") == "deleted")
    assert not h.mounted() and h.loops() == [] and h.images() == []
    assert h.stop() == 0


def test_ready_is_bounded_and_names_the_drive_not_mounted(workdir: Path):
    """A drive that cannot be mounted (its mount path lies under a regular file) holds READY=1 back only for
    daemon.ready-timeout-seconds; STATUS then says which drive is not mounted."""
    (workdir / "file").write_text("not a directory")
    notify = NotifySocket(workdir / "notify")
    h = DaemonHarness(workdir, daemon={"ready-timeout-seconds": 4})
    h.settings["mount-path"] = str(workdir / "file" / "mnt")
    h.write_config()
    try:
        started = time.monotonic()
        h.start(NOTIFY_SOCKET=notify.path)
        messages = notify.wait_for("READY=1", timeout=60)
        assert time.monotonic() - started >= 4
        status = [m for m in notify.wait_for("READY=1") if m.startswith("STATUS=")]
        assert any(m.startswith(f"STATUS=not mounted yet: {h.drive} |") for m in status), messages
        assert h.alive()
    finally:
        notify.close()
        h.close()


def test_status_and_plan_commands(harness: DaemonHarness):
    h = harness

    plan = subprocess.run([sys.executable, "-m", "bsud", "plan", "-c", str(h.config_path)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert f"{h.drive}: creating: next CreateVolume size_gib=1" in plan.stdout
    assert h.images() == []  # plan changed nothing
    status = subprocess.run([sys.executable, "-m", "bsud", "status", "--json", "-c", str(h.config_path)],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert status.returncode == 0, status.stderr
    assert '"source": "observed (no daemon running)"' in status.stdout
    h.start()
    h.wait_online(volumes=1)
    status = subprocess.run([sys.executable, "-m", "bsud", "status", "-c", str(h.config_path)],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert "source: daemon" in status.stdout and f"{h.drive}" in status.stdout and "online" in status.stdout
    assert h.stop() == 0
