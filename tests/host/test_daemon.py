"""The daemon as a process, local provider, btrfs layout, real loop devices: the whole lifecycle."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .daemon_harness import DaemonHarness, checksums

pytestmark = pytest.mark.host


@pytest.fixture
def harness(workdir: Path):
    h = DaemonHarness(workdir)
    yield h
    h.close()


def test_lifecycle(harness: DaemonHarness):
    h = harness
    h.start()
    st = h.wait_online(volumes=1)
    assert st["size_gib"] == 1 and h.mounted()

    h.fill("a.bin", 400)
    h.fill("b.bin", 480)
    sums = checksums(h.mount)
    st = h.wait_online(volumes=2)
    # 1 GiB + at least the classic larger volume (1 × 1.2 → 2 GiB); dd writes fast enough that the new volume
    # is sized for its rate, within max-total-size-gib (8).
    assert 3 <= st["size_gib"] <= 8
    assert st["used_percent"] < 85
    assert checksums(h.mount) == sums

    (h.mount / "a.bin").unlink()
    (h.mount / "b.bin").unlink()
    h.fill("c.bin", 100)
    sums = checksums(h.mount)
    st = h.wait_for("scale-down to one volume", lambda s: s.get("phase") == "online" and len(s["volumes"]) == 1,
                    timeout=180)
    assert st["size_gib"] == 1
    assert checksums(h.mount) == sums
    assert len(h.images()) == 1 and len(h.loops()) == 1

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
