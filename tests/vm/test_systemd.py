"""The systemd lane: the host's own systemd as PID 1 in the test VM, the Debian package (scripts/build-deb, built by
scripts/vm-test before it boots the guests) installed with dpkg, its unit driven with systemctl, as an operator would.

In order, on one installed package and one drive (lvm layout, EC2 provider against the bridged moto behind a fault
proxy, disks hot-plugged): the unit verifies and every hardening option is in effect; a boot with the cloud API not
answering holds no login, READY comes within its bound, an application ordered after bsud-wait-online@ starts only
once the drive is mounted, which happens once the API answers again; warnings reach the journal as priority 4;
NFS/iSCSI/NVMe-oF exports work through the hardened unit; reload applies a good config and fails, naming the
problem, on a bad one (the running config stays); kill -9 → restarted; frozen (SIGSTOP) → the watchdog restarts it;
a drive thread stuck in a grow on a frozen filesystem → the watchdog restarts it and the drive recovers; a config error is not
restarted in a loop; stop leaves the drive; `dpkg --purge` leaves nothing of the package and the drive as it was.
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

from ..cloud.faultproxy import FaultProxy
from .conftest import REGION, ZONE, VmCloud

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path("/etc/osc/bsud.json")
STATUS = Path("/run/bsud/status.json")
DRIVE, MOUNT = "sd-data", "/mnt/sd-data"
#: Test-only timings (a drop-in): the shipped unit's watchdog is 120 s, its restart delay 10 s.
DROP_IN = """[Service]
WatchdogSec=15s
RestartSec=1s
TimeoutAbortSec=3s
TimeoutStopSec=10s
"""
#: An application that keeps its data on the drive: it records what it found at the mount path when it started.
APP = f"""[Unit]
Description=an application on bsud's drive {DRIVE}
Requires=bsud-wait-online@{DRIVE}.service
After=bsud-wait-online@{DRIVE}.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'findmnt -n -o FSTYPE {MOUNT} > /run/bsud-test-app.saw'
"""
EXPORTS = [
    {"kind": "nfs", "clients": ["127.0.0.1"], "options": ["rw", "sync", "no_subtree_check"]},
    {"kind": "iscsi", "iqn": "iqn.2026-12.test.bsud:systemd", "path": "luns", "lun-size-gib": 1,
     "initiators": ["iqn.2026-12.test.bsud:client"]},
    {"kind": "nvmeof", "nqn": "nqn.2026-12.test.bsud:systemd", "path": "ns", "size-gib": 1,
     "hosts": ["nqn.2026-12.test.bsud:host"], "address": "127.0.0.1", "port": 4420},
]


def sh(*argv: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def show(prop: str, unit: str = "bsud.service") -> str:
    return sh("systemctl", "show", "-P", prop, unit).stdout.strip()


def journal(*args: str) -> str:
    return sh("journalctl", "-u", "bsud", "--no-pager", *args, check=False).stdout


def main_pid() -> int:
    """bsud's pid (never 0: os.kill(0, …) would signal the test's own process group)."""
    pid = int(show("MainPID"))
    assert pid > 0, f"bsud is not running: {show('ActiveState')}/{show('SubState')}; journal:\n" \
                    f"{journal('-n', '30', '-o', 'cat')}"
    return pid


def mounted() -> bool:
    return sh("findmnt", "-n", "-o", "FSTYPE", MOUNT, check=False).stdout.strip() == "btrfs"


def say(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}", flush=True)


def wait_for(what: str, check, timeout: float = 240) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; journal:\n"
                                 f"{journal('-n', '40', '-o', 'cat')}")
        time.sleep(0.5)
    return time.monotonic() - started


def status() -> dict:
    try:
        return json.loads(STATUS.read_text())
    except (OSError, ValueError):
        return {}


def converged() -> bool:
    """The running daemon (this MainPID) reports the drive online, idle and mounted."""
    data = status()
    drive = data.get("drives", {}).get(DRIVE, {})
    return str(data.get("pid")) == show("MainPID") and drive.get("phase") == "online" and \
        drive.get("action") == "Idle" and mounted()


class Operator:
    """What the tests share: the cloud (moto with hot-plug, behind a fault proxy) and the config they write."""

    def __init__(self, cloud: VmCloud, proxy: FaultProxy) -> None:
        self.cloud, self.proxy = cloud, proxy
        self.drive: dict = {"name": DRIVE, "target": "online", "mount-path": MOUNT, "layout": "lvm",
                            "initial-size-gib": 1, "max-bsu-count": 3, "max-total-size-gib": 4}
        self.daemon: dict = {"full-check-seconds": 5, "retry-seconds": 1, "ready-timeout-seconds": 20}

    def write_config(self, **drive: object) -> None:
        self.drive.update(drive)
        doc = {"authentication": {"access-key": "testing", "secret-key": "testing"},
               "cloud": {"provider": "ec2", "endpoint": self.proxy.endpoint, "region": REGION,
                         "instance-id": self.cloud.instance_id, "availability-zone": ZONE,
                         "api-calls-per-second": 50, "max-attempts": 3},
               "daemon": self.daemon, "drives": [self.drive]}
        CONFIG.write_text(json.dumps(doc))
        CONFIG.chmod(0o600)

    def volumes(self) -> list[str]:
        found = self.cloud.ec2.describe_volumes(Filters=[{"Name": "tag:osc.bsud.drive-name", "Values": [DRIVE]}])
        return sorted(v["VolumeId"] for v in found["Volumes"])


@pytest.fixture(scope="module")
def op(bridge, tmp_path_factory):
    if os.environ.get("BSUD_VM_INIT") != "systemd":
        pytest.skip("systemd lane: needs systemd as PID 1; scripts/vm-test boots a guest of its own for this file")
    debs = sorted((ROOT / "dist").glob("bsud_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        pytest.skip("systemd lane: no dist/bsud_*.deb; scripts/vm-test builds it with scripts/build-deb")
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{bridge.endpoint}/moto-api/reset", method="POST"), timeout=10)
    cloud = VmCloud(bridge, tmp_path_factory.mktemp("systemd"))
    bridge.flavour = "virtio"
    proxy = FaultProxy(bridge.endpoint)
    sh("dpkg", "-i", str(debs[-1]))
    assert Path("/usr/bin/bsud").exists() and oct(CONFIG.stat().st_mode & 0o777) == "0o600"
    drop_in = Path("/etc/systemd/system/bsud.service.d/test.conf")
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text(DROP_IN)
    Path("/etc/systemd/system/bsud-test-app.service").write_text(APP)
    sh("systemctl", "daemon-reload")
    operator = Operator(cloud, proxy)
    operator.write_config()
    yield operator
    sh("systemctl", "stop", "bsud", check=False)
    proxy.close()


@pytest.fixture(autouse=True)
def said_when_failed(request, capsys):
    """A failed test shows what systemd and bsud said (the assertion alone rarely tells why)."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        status = sh("systemctl", "status", "--no-pager", "-n", "0", "bsud", check=False).stdout
        say(capsys, f"--- {request.node.name} failed:\n{report.longreprtext[-3000:]}\n--- systemctl status bsud:\n"
                    f"{status}\n--- journal:\n{journal('-n', '60', '-o', 'cat')}")


def test_the_installed_unit_verifies_and_is_hardened_without_a_mount_namespace(op, capsys):
    verify = sh("systemd-analyze", "verify", "/lib/systemd/system/bsud.service",
                "/lib/systemd/system/bsud-wait-online@.service", "/lib/systemd/system/bsud-snapshot@.service",
                "/lib/systemd/system/bsud-snapshot@.timer", check=False)
    ours = [line for line in (verify.stdout + verify.stderr).splitlines() if "bsud" in line]
    assert verify.returncode == 0 and not ours, verify.stdout + verify.stderr
    security = sh("systemd-analyze", "security", "--no-pager", "bsud.service", check=False).stdout
    score = re.search(r"Overall exposure level for bsud\.service: ([\d.]+) (\w+)", security)
    assert score, security
    say(capsys, f"systemd-analyze security bsud.service: {score.group(1)} {score.group(2)} (8.9 EXPOSED before "
                "issue 20)")
    assert float(score.group(1)) <= 6.0, security
    # Every option that would give bsud its own mount namespace stays off: its mounts must be the host's.
    for prop in ("PrivateTmp", "PrivateDevices", "PrivateMounts", "ProtectHome", "ProtectSystem",
                 "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups"):
        assert show(prop) in ("no", ""), prop
    # …and each option that needs none is in effect (what the lanes below run under).
    caps = show("CapabilityBoundingSet").split()
    assert "cap_sys_admin" in caps and "cap_sys_time" not in caps and "cap_net_admin" not in caps, caps
    # only a mount namespace (restoring a snapshot set isolates btrfstune in one); systemd prints the allowed list,
    # or the denied one after "~"
    spaces = show("RestrictNamespaces")
    assert spaces == "mnt" or (spaces.startswith("~") and "mnt" not in spaces[1:].split()
                               and "net" in spaces[1:].split()), spaces
    assert show("ProtectClock") == "yes" and show("ProtectHostname") == "yes"
    assert show("UMask") == "0077" and show("DevicePolicy") == "closed"
    assert set(show("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert show("SystemCallFilter").startswith("~") and show("SystemCallErrorNumber") in ("EPERM", "1")
    assert show("Type") == "notify" and show("Restart") == "on-failure"
    assert show("RestartPreventExitStatus") == "2"


def test_a_boot_with_the_cloud_not_answering_holds_no_login_and_the_app_waits_for_its_drive(op, capsys):
    """As at boot: bsud (enabled), the app that needs its drive, remote-fs.target and systemd-user-sessions started
    in one transaction, while the cloud API accepts connections and never answers."""
    sh("systemctl", "enable", "bsud")
    sh("systemctl", "stop", "systemd-user-sessions", "bsud-test-app", check=False)
    Path("/run/nologin").write_text("System is booting up.\n")  # what systemd-tmpfiles makes at boot
    Path("/run/bsud-test-app.saw").unlink(missing_ok=True)
    op.proxy.mode = "hang"
    try:
        sh("systemctl", "start", "--no-block", "bsud.service", "bsud-test-app.service", "remote-fs.target",
           "systemd-user-sessions.service")
        logins = wait_for("logins allowed", lambda: show("ActiveState", "systemd-user-sessions.service") == "active"
                          and not Path("/run/nologin").exists(), timeout=60)
        assert show("ActiveState") == "activating", "bsud was ready while its cloud was not answering?"
        ready = wait_for("READY=1 at ready-timeout-seconds", lambda: show("ActiveState") == "active", timeout=90)
        assert ready + logins >= 15, "READY before the drive was mounted and before ready-timeout-seconds"
        assert f"not mounted yet: {DRIVE}" in show("StatusText")
        # The app's start job waits on bsud-wait-online@ (a unit waiting for its job is still "inactive").
        assert show("ActiveState", "bsud-test-app.service") != "active" and not Path("/run/bsud-test-app.saw").exists()
        assert "bsud-test-app.service" in sh("systemctl", "list-jobs", "--no-legend").stdout
    finally:
        op.proxy.mode = "pass"  # the cloud answers again
    came = wait_for("the drive mounted once the cloud answers", converged)
    wait_for("the app started", lambda: show("ActiveState", "bsud-test-app.service") == "active", timeout=60)
    assert Path("/run/bsud-test-app.saw").read_text().strip() == "btrfs", "the app started before the mount"
    assert show("ActiveState", f"bsud-wait-online@{DRIVE}.service") == "active"
    say(capsys, f"boot, cloud API not answering: logins allowed after {logins:.1f} s, bsud READY after "
                f"{logins + ready:.1f} s (ready-timeout-seconds 20), drive mounted {came:.1f} s after the API came "
                "back, the app after it")
    (Path(MOUNT) / "kept").write_bytes(os.urandom(1 << 20))


def test_warnings_reach_the_journal_as_warnings(op):
    warned = journal("-p", "warning", "-o", "json")
    entries = [json.loads(line) for line in warned.splitlines() if line.startswith("{")]
    ours = [e for e in entries if str(e.get("MESSAGE", "")).startswith("ready, but drives are not mounted yet")]
    assert ours and all(e["PRIORITY"] == "4" for e in ours), warned[-2000:]
    assert not any(str(e.get("MESSAGE", "")).startswith("bsud starting") for e in entries)  # info stays out
    assert not any(re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", str(e.get("MESSAGE", ""))) for e in ours)
    assert "bsud starting" in journal("-p", "info", "-o", "cat")


def test_exports_work_through_the_hardened_unit(op, capsys):
    """The kernel NFS server (exportfs), LIO and nvmet (configfs) driven by bsud under the unit's sandbox."""
    sh("systemctl", "start", "rpcbind.socket", "rpcbind.service", "nfs-server.service")
    pid = show("MainPID")
    op.write_config(exports=EXPORTS)
    sh("systemctl", "reload", "bsud")
    wait_for("exports applied", lambda: (status().get("drives", {}).get(DRIVE, {}).get("exports") or {})
             .get("in_sync") is True and converged(), timeout=180)
    assert show("MainPID") == pid
    assert MOUNT in sh("exportfs", "-s").stdout
    assert Path(f"/sys/kernel/config/target/iscsi/{EXPORTS[1]['iqn']}/tpgt_1/enable").read_text().strip() == "1"
    nvmet = Path("/sys/kernel/config/nvmet/subsystems") / EXPORTS[2]["nqn"] / "namespaces" / "1" / "enable"
    assert nvmet.read_text().strip() == "1"
    servers = status()["drives"][DRIVE]["exports"]["servers"]
    say(capsys, f"exports under the hardened unit: {'; '.join(servers)}")
    op.write_config(exports=[])
    sh("systemctl", "reload", "bsud")
    wait_for("exports withdrawn", lambda: not (status().get("drives", {}).get(DRIVE, {}).get("exports") or {})
             and converged(), timeout=120)
    assert MOUNT not in sh("exportfs", "-s").stdout
    sh("systemctl", "stop", "nfs-server.service")


def test_loop_devices_work_through_the_hardened_unit(op, capsys):
    """The local provider (sparse files, losetup, btrfs across loop devices) under the unit's sandbox: created,
    mounted, then deleted by the daemon (losetup --detach). The EC2 drive meanwhile is left as it is (not in that
    config: unmanaged), and taken up again after."""
    ec2 = CONFIG.read_text()
    loop = {"name": "sd-loop", "target": "online", "mount-path": "/mnt/sd-loop", "layout": "btrfs",
            "initial-size-gib": 1}
    doc = {"cloud": {"provider": "local", "state-dir": "/var/lib/bsud/local", "instance-id": "i-systemd"},
           "daemon": op.daemon, "drives": [loop]}
    CONFIG.write_text(json.dumps(doc))
    try:
        took = time.monotonic()
        sh("systemctl", "restart", "bsud")  # returns at READY=1: once the drive is mounted (well within 60 s)
        took = time.monotonic() - took
        assert status()["drives"]["sd-loop"]["mounted"] is True
        backing = sh("losetup", "--list", "--noheadings", "-O", "BACK-FILE").stdout
        assert "/var/lib/bsud/local/" in backing
        CONFIG.write_text(json.dumps({**doc, "drives": [{**loop, "target": "delete"}]}))
        sh("systemctl", "reload", "bsud")
        wait_for("the loop drive deleted", lambda: status().get("drives", {}).get("sd-loop", {})
                 .get("phase") == "deleted", timeout=180)
        assert "/var/lib/bsud/local/" not in sh("losetup", "--list", "--noheadings", "-O", "BACK-FILE").stdout
        assert mounted(), "the EC2 drive, not in this config, was left as it is"
    finally:
        CONFIG.write_text(ec2)
    sh("systemctl", "restart", "bsud")
    wait_for("the EC2 drive taken up again", converged)
    say(capsys, f"local provider under the hardened unit: systemctl restart returned in {took:.1f} s with the loop "
                "drive mounted (READY=1), then deleted with its loop devices")


def test_the_snapshot_timer_takes_sets_of_the_drive_and_keeps_the_newest(op, capsys):
    """bsud-snapshot@.timer/.service as shipped: the timer enabled has a next run; the service (what the timer
    starts) takes a set of the EC2 drive — the bridge copies the disks — and, kept to 1 by a drop-in, deletes the
    older one."""
    timer, service = f"bsud-snapshot@{DRIVE}.timer", f"bsud-snapshot@{DRIVE}.service"
    drop_in = Path(f"/etc/systemd/system/{service}.d/keep.conf")
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text("[Service]\nEnvironment=BSUD_SNAPSHOT_KEEP=1\n")
    sh("systemctl", "daemon-reload")
    sh("systemctl", "start", "bsud")  # running already when the file runs whole; started when this test runs alone
    wait_for("the drive online", converged)
    try:
        sh("systemctl", "enable", "--now", timer)
        assert show("ActiveState", timer) == "active" and show("NextElapseUSecRealtime", timer)
        runs = []
        for _ in range(2):
            began = time.monotonic()
            started = sh("systemctl", "start", service, check=False)  # a oneshot: returns once done (or failed)
            runs.append(time.monotonic() - began)
            said = sh("journalctl", "-u", service, "--no-pager", "-o", "cat", check=False).stdout
            assert started.returncode == 0 and show("Result", service) == "success", started.stderr + said
        sets = json.loads(sh("bsud", "-c", str(CONFIG), "snapshots", DRIVE, "--json").stdout)
        assert len(sets) == 1 and sets[0]["state"] == "completed", sets
        assert f"{sets[0]['id']}: drive {DRIVE}" in said and "deleted (--keep 1)" in said, said
        assert mounted() and status()["drives"][DRIVE]["phase"] == "online"
        sh("bsud", "-c", str(CONFIG), "delete-snapshot-set", "--yes", sets[0]["id"])
        say(capsys, f"bsud-snapshot@ service under systemd: {runs[0]:.1f} s and {runs[1]:.1f} s a set (the second "
                    "deleting the first)")
    finally:
        sh("systemctl", "disable", "--now", timer, check=False)
        drop_in.unlink(missing_ok=True)
        drop_in.parent.rmdir()
        sh("systemctl", "daemon-reload")


def test_reload_applies_a_good_config_and_fails_naming_the_problem_of_a_bad_one(op):
    pid = show("MainPID")
    op.write_config(**{"max-used-space-perc": 90})
    sh("systemctl", "reload", "bsud")  # returns once the daemon said it applied it
    assert status()["reload_result"] == "applied" and show("MainPID") == pid
    good = CONFIG.read_text()
    CONFIG.write_text(good.replace('"target": "online"', '"target": "online", "target": "delete"'))
    refused = sh("systemctl", "reload", "bsud", check=False)
    assert refused.returncode != 0, "systemctl reload said it worked on a config bsud refuses"
    said = sh("systemctl", "status", "--no-pager", "-n", "20", "bsud", check=False).stdout
    assert f"drive '{DRIVE}': field 'target': repeated key" in said, said
    assert show("ActiveState") == "active" and show("MainPID") == pid
    assert status()["drives"][DRIVE]["target"] == "online"  # the running config stays
    CONFIG.write_text(good)


def test_killed_it_is_restarted_and_the_drive_converges(op):
    pid = main_pid()
    restarts = int(show("NRestarts"))
    os.kill(pid, signal.SIGKILL)
    wait_for("a new bsud", lambda: show("MainPID") not in ("0", str(pid)) and show("ActiveState") == "active")
    assert int(show("NRestarts")) == restarts + 1
    wait_for("the drive online under the new daemon", converged)
    assert (Path(MOUNT) / "kept").stat().st_size == 1 << 20


def test_frozen_it_is_killed_by_the_watchdog_and_restarted(op, capsys):
    pid = main_pid()
    restarts = int(show("NRestarts"))
    assert show("WatchdogUSec") == "15s"
    os.kill(pid, signal.SIGSTOP)
    took = wait_for("the watchdog's restart", lambda: show("MainPID") not in ("0", str(pid)) and
                    show("ActiveState") == "active", timeout=120)
    say(capsys, f"frozen bsud replaced after {took:.1f} s (WatchdogSec=15s)")
    assert int(show("NRestarts")) == restarts + 1
    assert "watchdog" in journal("-o", "cat").lower()
    wait_for("the drive online under the new daemon", converged)


def test_a_drive_thread_stuck_on_a_frozen_filesystem_has_the_watchdog_restart_bsud(op, capsys):
    """The main loop keeps running; the drive's step blocks in a command no signal can end: it must grow the
    filesystem (given 128 MiB to grow into) while the filesystem is frozen (FIFREEZE), which holds the resize in
    uninterruptible sleep. bsud stops pinging the watchdog once the command outlives its bound (its 60 s timeout +
    10 s); systemd restarts bsud; once thawed, the drive goes on."""
    pid = main_pid()
    restarts = int(show("NRestarts"))
    os.kill(pid, signal.SIGSTOP)  # set it up between two of its steps (well within WatchdogSec)
    try:
        sh("btrfs", "filesystem", "resize", "1:-128m", MOUNT)
        sh("fsfreeze", "--freeze", MOUNT)
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        took = wait_for("the watchdog's restart", lambda: show("MainPID") not in ("0", str(pid)), timeout=240)
    finally:
        sh("fsfreeze", "--unfreeze", MOUNT, check=False)
    said = journal("-o", "cat")
    assert "a drive's thread is stuck; no longer pinging systemd's watchdog" in said, said[-3000:]
    assert "command btrfs filesystem resize has run for" in said, said[-3000:]
    assert "Watchdog timeout" in said and int(show("NRestarts")) >= restarts + 1
    wait_for("the drive online and grown under the new daemon", converged)
    assert (Path(MOUNT) / "kept").stat().st_size == 1 << 20
    say(capsys, f"drive thread stuck in a grow on a frozen filesystem: bsud restarted by the watchdog after "
                f"{took:.1f} s (the resize's 60 s timeout + 10 s + WatchdogSec 15 s)")


def test_a_config_error_is_not_restarted_in_a_loop(op):
    good = CONFIG.read_text()
    CONFIG.write_text(good.replace('"layout": "lvm"', '"layout": "lvm", "max-bsu-count": 1e40'))
    try:
        assert sh("systemctl", "restart", "bsud", check=False).returncode != 0
        restarts = int(show("NRestarts"))  # a restart by hand starts the count again
        time.sleep(5)  # RestartSec=1s in this lane: a loop would have restarted it several times by now
        assert show("ActiveState") == "failed" and show("ExecMainStatus") == "2"
        assert int(show("NRestarts")) == restarts == 0
        said = sh("systemctl", "status", "--no-pager", "-n", "10", "bsud", check=False).stdout
        assert "field 'max-bsu-count': 1e40 is not a usable value" in said, said
    finally:
        CONFIG.write_text(good)
        sh("systemctl", "reset-failed", "bsud", check=False)
        sh("systemctl", "start", "bsud", check=False)
    wait_for("online again", converged)


def test_stop_is_a_clean_exit_that_leaves_the_drive(op):
    sh("systemctl", "stop", "bsud")
    assert show("ActiveState") == "inactive"
    assert show("Result") == "success" and show("ExecMainStatus") == "0"
    assert mounted(), "stopping bsud must leave its drive mounted"


def test_purge_leaves_nothing_of_the_package_and_the_drive_as_it_was(op, capsys):
    files = [Path(p) for p in sh("dpkg", "-L", "bsud").stdout.split()]
    volumes = op.volumes()
    assert volumes
    sh("systemctl", "stop", "bsud-test-app", check=False)
    sh("dpkg", "--purge", "bsud")
    left = [str(p) for p in files if p.exists() and not p.is_dir()]
    left += [str(p) for p in (Path("/opt/bsud"), Path("/etc/osc"), Path("/run/bsud")) if p.exists()]
    left += [str(p) for p in Path("/etc/systemd/system").rglob("*bsud.service") if "bsud.service.d" not in str(p)]
    left += [str(p) for p in Path("/var/lib/systemd/deb-systemd-helper-enabled").rglob("*bsud*")]
    assert not left, f"left by the package after dpkg --purge: {left}"
    assert mounted() and (Path(MOUNT) / "kept").stat().st_size == 1 << 20
    assert op.volumes() == volumes
    say(capsys, f"purged: {len(files)} paths of the package gone, the drive still mounted on {len(volumes)} "
                "volume(s)")
