"""The systemd lane: the host's own systemd as PID 1 in the test VM, the Debian package (scripts/build-deb, built by
scripts/vm-test before it boots the guests) installed with dpkg, its unit driven with systemctl.

start → active only once the drive is mounted; reload → config reloaded; a broken config on reload → still active,
the refusal in `systemctl status`; kill -9 → restarted (Restart=on-failure); frozen (SIGSTOP) → killed by the
watchdog and restarted; stop → exit 0, the drive left as it is. `systemd-analyze verify` and `security` on the
installed unit. One drive, local provider (loop devices), lvm layout (real device-mapper).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path("/etc/osc/bsud.json")
STATUS = Path("/run/bsud/status.json")
MOUNT = "/mnt/sd-data"
#: Test-only timings (a drop-in): the shipped unit's watchdog is 120 s, its restart delay 10 s.
DROP_IN = """[Service]
WatchdogSec=15s
RestartSec=1s
TimeoutAbortSec=3s
"""


def sh(*argv: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def show(prop: str) -> str:
    return sh("systemctl", "show", "-P", prop, "bsud.service").stdout.strip()


def write_config(**drive: object) -> None:
    doc = {"cloud": {"provider": "local", "state-dir": "/var/lib/bsud/local", "instance-id": "i-systemd"},
           "daemon": {"full-check-seconds": 5, "retry-seconds": 1},
           "drives": [{"name": "sd-data", "target": "online", "mount-path": MOUNT, "layout": "lvm",
                       "initial-size-gib": 1, "max-bsu-count": 3, **drive}]}
    CONFIG.write_text(json.dumps(doc))
    CONFIG.chmod(0o600)


def mounted() -> bool:
    return sh("findmnt", "-n", "-o", "FSTYPE", MOUNT, check=False).stdout.strip() == "btrfs"


def wait_for(what: str, check, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            journal = sh("journalctl", "-u", "bsud", "-n", "40", "--no-pager", check=False).stdout
            raise AssertionError(f"timed out waiting for {what}; journal:\n{journal}")
        time.sleep(0.5)


def converged() -> bool:
    """The running daemon (this MainPID) reports the drive online and mounted."""
    try:
        data = json.loads(STATUS.read_text())
    except (OSError, ValueError):
        return False
    return str(data.get("pid")) == show("MainPID") and data["drives"]["sd-data"]["phase"] == "online" and mounted()


@pytest.fixture(scope="module")
def installed():
    if os.environ.get("BSUD_VM_INIT") != "systemd":
        pytest.skip("systemd lane: needs systemd as PID 1; scripts/vm-test boots a guest of its own for this file")
    debs = sorted((ROOT / "dist").glob("bsud_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        pytest.skip("systemd lane: no dist/bsud_*.deb; scripts/vm-test builds it with scripts/build-deb")
    sh("dpkg", "-i", str(debs[-1]))
    assert Path("/usr/bin/bsud").exists() and oct(CONFIG.stat().st_mode & 0o777) == "0o600"
    drop_in = Path("/etc/systemd/system/bsud.service.d/test.conf")
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text(DROP_IN)
    sh("systemctl", "daemon-reload")
    write_config()
    yield
    sh("systemctl", "stop", "bsud", check=False)


def test_the_installed_unit_verifies_and_keeps_the_host_s_mount_namespace(installed, capsys):
    verify = sh("systemd-analyze", "verify", "/lib/systemd/system/bsud.service", check=False)
    ours = [line for line in (verify.stdout + verify.stderr).splitlines() if "bsud.service" in line]
    assert verify.returncode == 0 and not ours, verify.stdout + verify.stderr
    security = sh("systemd-analyze", "security", "--no-pager", "bsud.service", check=False).stdout
    score = re.search(r"Overall exposure level for bsud\.service: ([\d.]+) (\w+)", security)
    assert score, security
    with capsys.disabled():
        print(f"\nsystemd-analyze security bsud.service: {score.group(1)} {score.group(2)}", flush=True)
    # Every option that would give bsud its own mount namespace stays off: its mounts must be the host's.
    for prop in ("PrivateTmp", "PrivateDevices", "PrivateMounts", "ProtectHome", "ProtectSystem"):
        assert show(prop) in ("no", ""), prop
    assert show("Type") == "notify" and show("Restart") == "on-failure"


def test_start_returns_once_the_drive_is_mounted(installed, capsys):
    assert not mounted()
    started = time.monotonic()
    sh("systemctl", "start", "bsud")  # Type=notify: returns at READY=1
    took = time.monotonic() - started
    assert mounted(), "systemctl start returned (READY=1) before the drive was mounted"
    assert show("ActiveState") == "active"
    with capsys.disabled():
        print(f"\nsystemctl start bsud: {took:.1f} s to a mounted drive (created, PV/VG/LV, mkfs, mount)", flush=True)
    (Path(MOUNT) / "kept").write_bytes(os.urandom(1 << 20))


def test_reload_applies_the_config_and_a_broken_one_is_refused(installed):
    pid = show("MainPID")
    write_config(**{"max-used-space-perc": 90})
    sh("systemctl", "reload", "bsud")
    wait_for("config reloaded", lambda: "config reloaded" in sh("journalctl", "-u", "bsud", "--no-pager",
                                                                  "-o", "cat").stdout)
    assert show("MainPID") == pid and show("ActiveState") == "active"
    good = CONFIG.read_text()
    CONFIG.write_text('{"drives": [{"name": "sd-data"')
    sh("systemctl", "reload", "bsud")
    wait_for("reload refused", lambda: "config reload refused" in sh(
        "systemctl", "status", "--no-pager", "-n", "20", "bsud", check=False).stdout)
    assert show("ActiveState") == "active" and show("MainPID") == pid
    CONFIG.write_text(good)


def test_killed_it_is_restarted_and_the_drive_converges(installed):
    pid = int(show("MainPID"))
    restarts = int(show("NRestarts"))
    os.kill(pid, signal.SIGKILL)
    wait_for("a new bsud", lambda: show("MainPID") not in ("0", str(pid)) and show("ActiveState") == "active")
    assert int(show("NRestarts")) == restarts + 1
    wait_for("the drive online under the new daemon", converged)
    assert (Path(MOUNT) / "kept").stat().st_size == 1 << 20


def test_frozen_it_is_killed_by_the_watchdog_and_restarted(installed, capsys):
    pid = int(show("MainPID"))
    restarts = int(show("NRestarts"))
    assert show("WatchdogUSec") == "15s"
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    wait_for("the watchdog's restart", lambda: show("MainPID") not in ("0", str(pid)) and
             show("ActiveState") == "active", timeout=120)
    with capsys.disabled():
        print(f"\nfrozen bsud replaced after {time.monotonic() - started:.1f} s (WatchdogSec=15s)", flush=True)
    assert int(show("NRestarts")) == restarts + 1
    journal = sh("journalctl", "-u", "bsud", "--no-pager", "-o", "cat").stdout
    assert "Watchdog timeout" in journal or "watchdog" in journal.lower(), journal[-2000:]
    wait_for("the drive online under the new daemon", converged)


def test_stop_is_a_clean_exit_that_leaves_the_drive(installed):
    sh("systemctl", "stop", "bsud")
    assert show("ActiveState") == "inactive"
    assert show("Result") == "success" and show("ExecMainStatus") == "0"
    assert mounted(), "stopping bsud must leave its drive mounted"
