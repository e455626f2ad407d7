"""Faults around the daemon (local provider, btrfs layout): a second daemon on the same config, and a full
disk under the status file. Both must leave the drive served and say what is wrong in one line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .daemon_harness import ROOT, DaemonHarness

pytestmark = pytest.mark.host


@pytest.fixture
def harness(workdir: Path):
    h = DaemonHarness(workdir, drive="faults")
    yield h
    h.close()


def test_second_daemon_on_the_same_config_refuses_naming_the_first(harness: DaemonHarness):
    h = harness
    h.start()
    h.wait_online(volumes=1)
    second = subprocess.run([sys.executable, "-m", "bsud", "-c", str(h.config_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert f"another bsud (pid {h.proc.pid}) is running" in second.stderr
    assert h.alive() and h.mounted()
    assert h.stop() == 0
    # The lock goes with its process: the next start takes it.
    h.start()
    h.wait_online(volumes=1)
    assert h.stop() == 0


def test_full_disk_under_the_status_file(harness: DaemonHarness, workdir: Path):
    h = harness
    small = workdir / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        filler = small / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k", "count=100"], capture_output=True)
        h.status_path = small / "status.json"
        h.write_config()
        h.start()
        deadline = time.monotonic() + 120
        while not h.mounted() and time.monotonic() < deadline:
            assert h.alive(), h.tail()
            time.sleep(0.3)
        assert h.mounted(), h.tail()
        assert "cannot write the status file" in h.log_path.read_text()
        assert not h.status_path.exists()
        assert [p.name for p in small.iterdir() if p.name.endswith(".tmp")] == []  # no half-written left-over
        filler.unlink()
        st = h.wait_online(volumes=1)  # the status comes back as soon as there is room
        assert st["last_error"] is None
        assert h.stop() == 0
    finally:
        if h.alive():
            h.proc.kill()
            h.proc.wait()
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_a_volume_deleted_behind_its_back_blocks_the_drive_and_nothing_is_touched(harness: DaemonHarness):
    """btrfs layout: a member volume deleted while the drive is offline. Back online, the drive is blocked with
    what is missing and what to do; bsud never mounts it degraded, creates nothing and deletes nothing."""
    from bsud.cloud.local import LocalCloud
    from bsud.config import CloudSettings

    h = harness
    h.start()
    h.wait_online(volumes=1)
    h.fill("a.bin", 880)
    st = h.wait_online(volumes=2)
    h.write_config(target="offline")
    h.signal(signal.SIGHUP)
    h.wait_for("offline", lambda s: s.get("phase") == "offline")

    lost = max(st["volumes"], key=lambda v: v["size_gib"])["id"]
    LocalCloud(CloudSettings(provider="local", state_dir=str(h.state_dir), instance_id="i-lifecycle")) \
        .delete_volume(lost)
    h.write_config(target="online")
    h.signal(signal.SIGHUP)
    st = h.wait_for("blocked on the missing device", lambda s: s.get("phase") == "blocked" and
                    "misses some of its devices" in (s.get("last_error") or ""), timeout=60)
    assert "deleted or lost its tag" in st["last_error"]
    time.sleep(5)
    assert len(h.images()) == 1 and not h.mounted() and h.alive()
    assert [v["id"] for v in h.status()["volumes"]] != [] and lost not in [v["id"] for v in h.status()["volumes"]]
    assert h.stop() == 0
