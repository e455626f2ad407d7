"""Snapshot sets on the local provider with real loop devices and btrfs: a two-volume drive snapshotted while a
writer runs (the writer only pauses), the set's images mounted as one filesystem with the data as of the freeze;
the freeze never outlives bsud (its guard thaws after a kill -9); a set with a failed snapshot is incomplete."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bsud.backup.freeze import FIFREEZE, FITHAW, FreezeError, frozen, thaw_drives_left_frozen, thaw_if_frozen
from bsud.backup.sets import INCOMPLETE, group
from bsud.backup.take import BackupError, take_set
from bsud.cloud.local import LocalCloud
from bsud.config import load_config
from bsud.host import mounts
from bsud.lock import snapshot_lock
from bsud.naming import COMPLETED, SNAPSHOT_INCOMPLETE_TAG, label_for
from bsud.runner import Runner

from .conftest import teardown_dir
from .daemon_harness import ROOT, DaemonHarness, checksums

pytestmark = pytest.mark.host

MIB = 1024**2


@pytest.fixture
def btrfs_mount(btrfs_loop):
    loop, point = btrfs_loop
    subprocess.run(["mount", loop, point], check=True)
    yield Path(point)


def two_volume_drive(workdir: Path, drive: str) -> DaemonHarness:
    """A daemon's btrfs drive of the local provider grown to two volumes by 600 MiB (the first holds 1 GiB; scale
    at 50 %, never shrunk)."""
    h = DaemonHarness(workdir, drive=drive, **{"max-used-space-perc": 50, "min-used-space-perc": 5,
                                               "disk-scale-factor-perc": 100})
    h.start()
    h.wait_online(volumes=1)
    h.fill("before.bin", 600)
    h.wait_online(volumes=2, timeout=180)
    return h


class Drives:
    """The daemons' drives a test makes, closed at its end (the last made first)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.made: list[DaemonHarness] = []

    def two_volumes(self, drive: str) -> DaemonHarness:
        """:func:`two_volume_drive` in the test's directory."""
        h = two_volume_drive(self.workdir, drive)
        self.made.append(h)
        return h

    def snapshot(self, h: DaemonHarness) -> str:
        """``bsud snapshot`` of ``h``'s drive; the set's id."""
        taken = bsud(h, "snapshot", h.drive)
        assert taken.returncode == 0, taken.stderr
        return taken.stdout.split(":")[0]

    def restored(self, live: DaemonHarness, drive: str, set_id: str, **settings) -> DaemonHarness:
        """A new drive ``drive`` made from snapshot set ``set_id`` in ``live``'s cloud (not started)."""
        (self.workdir / drive).mkdir()
        h = DaemonHarness(self.workdir / drive, drive=drive, cloud=live.cloud,
                          **{"from-snapshot-set": set_id, **settings})
        self.made.append(h)
        return h


@pytest.fixture
def drives(workdir: Path):
    made = Drives(workdir)
    yield made
    for h in reversed(made.made):
        h.close()


def write_later(path: Path) -> tuple[threading.Thread, list[float]]:
    """A write with fsync in a thread; the list gets the time it finished."""
    done: list[float] = []

    def run() -> None:
        with open(path, "wb") as fh:
            fh.write(b"x" * MIB)
            os.fsync(fh.fileno())
        done.append(time.monotonic())
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def test_a_freeze_holds_writes_until_the_thaw(btrfs_mount: Path):
    with frozen(str(btrfs_mount)):
        thread, done = write_later(btrfs_mount / "held.bin")
        time.sleep(1.0)
        assert done == [], "a write went through a frozen filesystem"
        thawed_at = time.monotonic()
    thread.join(10)
    assert done and done[0] >= thawed_at
    assert (btrfs_mount / "held.bin").stat().st_size == MIB
    assert thaw_if_frozen(str(btrfs_mount), "t") is False  # nothing frozen


FREEZE_AND_DIE = """
import os, signal, sys
from bsud.backup.freeze import frozen
with frozen(sys.argv[1], max_seconds=300):
    print("frozen", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_bsud_killed_while_frozen_is_thawed_by_its_guard_at_once(btrfs_mount: Path):
    proc = subprocess.Popen([sys.executable, "-c", FREEZE_AND_DIE, str(btrfs_mount)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "frozen"
    assert proc.wait(30) == -signal.SIGKILL
    started = time.monotonic()
    thread, done = write_later(btrfs_mount / "after.bin")
    thread.join(15)
    assert done, "the filesystem stayed frozen after bsud was killed"
    print(f"\nthawed by the guard {done[0] - started:.2f} s after the kill was seen")


def test_a_filesystem_left_frozen_is_thawed_at_the_next_start(btrfs_mount: Path):
    # frozen with no guard (as if bsud and its guard were killed together)
    fd = os.open(btrfs_mount, os.O_RDONLY | os.O_DIRECTORY)
    try:
        import fcntl
        fcntl.ioctl(fd, FIFREEZE, 0)
        assert thaw_if_frozen(str(btrfs_mount), "t") is True
        with pytest.raises(OSError):
            fcntl.ioctl(fd, FITHAW, 0)  # EINVAL: thawed already
    finally:
        os.close(fd)


def test_the_daemon_thaws_its_drive_left_frozen_when_it_starts(workdir: Path):
    h = DaemonHarness(workdir, drive="frozen")
    try:
        h.start()
        h.wait_online(volumes=1)
        assert h.stop() == 0
        fd = os.open(h.mount, os.O_RDONLY | os.O_DIRECTORY)
        try:
            import fcntl
            fcntl.ioctl(fd, FIFREEZE, 0)  # as a bsud killed together with its guard between freeze and thaw leaves it
        finally:
            os.close(fd)
        h.start()
        h.wait_online(volumes=1)
        assert "drive was left frozen (a snapshot interrupted between freeze and thaw): thawed" in h.tail(200)
        thread, done = write_later(h.mount / "after.bin")
        thread.join(10)
        assert done, "still frozen"
        assert h.stop() == 0
    finally:
        h.close()


class Paced(threading.Thread):
    """Appends 1 MiB blocks at ``rate`` bytes/s, fsyncing each; records each block's digest and the longest wait for
    one write (a freeze shows as a pause, never as an error)."""

    def __init__(self, path: Path, rate: float) -> None:
        super().__init__(daemon=True)
        self.path, self.rate = path, rate
        self.halt = threading.Event()
        self.blocks: list[bytes] = []
        self.error: OSError | None = None
        self.longest = 0.0

    def run(self) -> None:
        with open(self.path, "ab") as fh:
            while not self.halt.is_set():
                block = os.urandom(MIB)
                began = time.monotonic()
                try:
                    fh.write(block)
                    fh.flush()
                    os.fsync(fh.fileno())
                except OSError as exc:
                    self.error = exc
                    return
                self.longest = max(self.longest, time.monotonic() - began)
                self.blocks.append(hashlib.sha256(block).digest())
                self.halt.wait(MIB / self.rate)


def bsud(h: DaemonHarness, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bsud", "-c", str(h.config_path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def snapshot_while_written(h: DaemonHarness, rate: float, settle: float = 2
                           ) -> tuple[subprocess.CompletedProcess, Paced, int, int]:
    """``bsud snapshot`` of the harness's drive while a :class:`Paced` writer appends to written.bin: the command
    (it succeeded, and the writer saw no error), the writer (stopped), the blocks it had written before the command
    started and when it returned."""
    writer = Paced(h.mount / "written.bin", rate)
    writer.start()
    time.sleep(settle)
    before = len(writer.blocks)
    done = bsud(h, "snapshot", h.drive)
    after = len(writer.blocks)
    time.sleep(2)
    writer.halt.set()
    writer.join(60)
    assert done.returncode == 0, done.stderr
    assert writer.error is None, f"the writer failed during the snapshot: {writer.error}"
    return done, writer, before, after


def test_a_snapshot_set_of_a_two_volume_drive_while_written_restores_the_data_as_of_the_freeze(workdir: Path):
    h = two_volume_drive(workdir, "snapd")
    try:
        stable = checksums(h.mount)
        done, writer, before_snapshot, after_snapshot = snapshot_while_written(h, 8e6)
        print(f"\n{done.stdout.strip()}\nthe writer's longest wait for one block: {writer.longest:.2f} s")
        listed = json.loads(bsud(h, "snapshots", "--json").stdout)
        (snap_set,) = listed
        assert snap_set["state"] == COMPLETED and snap_set["volumes"] == 2 and snap_set["restorable"]
        assert snap_set["drive"] == "snapd" and snap_set["layout"] == "btrfs" and snap_set["fs_uuid"]
        assert "frozen" in done.stdout and snap_set["id"] in done.stdout

        # The set is one filesystem: with the live drive offline, its images mount as the drive did at the freeze.
        h.write_config(target="offline")
        h.signal(signal.SIGHUP)
        h.wait_for("offline", lambda s: s.get("phase") == "offline", timeout=120)
        assert h.stop() == 0
        cloud = LocalCloud(load_config(h.config_path).cloud)
        images = [s.backing_file for s in group(cloud.list_snapshots())[0].snapshots()]
        view = workdir / "restored"
        view.mkdir()
        loops = [subprocess.run(["losetup", "--find", "--show", "--read-only", img], check=True,
                                capture_output=True, text=True).stdout.strip() for img in images]
        subprocess.run(["btrfs", "device", "scan", *loops], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "ro", loops[0], str(view)], check=True)
        try:
            for name, digest in stable.items():
                assert hashlib.sha256((view / name).read_bytes()).hexdigest() == digest, f"{name} differs"
            data = (view / "written.bin").read_bytes()
            blocks = [hashlib.sha256(data[i:i + MIB]).digest() for i in range(0, len(data) - len(data) % MIB, MIB)]
            # every block fsynced before the command started is there, each as written, none torn, nothing
            # written after it returned
            assert len(data) % MIB == 0 and blocks == writer.blocks[:len(blocks)]
            assert before_snapshot <= len(blocks) <= after_snapshot, (before_snapshot, len(blocks), after_snapshot)
        finally:
            subprocess.run(["umount", str(view)], check=False)
            for loop in loops:
                subprocess.run(["btrfs", "device", "scan", "--forget", loop], capture_output=True)
                subprocess.run(["losetup", "-d", loop], check=False)

        gone = bsud(h, "delete-snapshot-set", "--yes", snap_set["id"])
        assert gone.returncode == 0, gone.stderr
        assert json.loads(bsud(h, "snapshots", "--json").stdout) == []
        assert not list((h.state_dir / "snapshots").glob("*.img"))
    finally:
        h.close()
        teardown_dir(workdir)


class FailingSecond(LocalCloud):
    """The local cloud, whose second CreateSnapshot fails (as a cloud's API may)."""

    calls = 0

    def create_snapshot(self, volume_id, description, tags):
        FailingSecond.calls += 1
        if FailingSecond.calls == 2:
            from bsud.errors import CloudError
            raise CloudError("CreateSnapshot", "InternalError: the cloud failed", volume_id=volume_id)
        return super().create_snapshot(volume_id, description, tags)


def test_a_failed_snapshot_leaves_an_incomplete_set_and_the_drive_thawed(workdir: Path):
    h = two_volume_drive(workdir, "snapf")
    try:
        config = load_config(h.config_path)
        with pytest.raises(BackupError) as info:
            take_set(config, "snapf", FailingSecond(config.cloud))
        assert "incomplete (1 of 2 snapshots)" in str(info.value) and "InternalError" in str(info.value)
        thread, done = write_later(h.mount / "after.bin")
        thread.join(10)
        assert done, "the drive stayed frozen after a failed snapshot"
        (snap_set,) = group(LocalCloud(config.cloud).list_snapshots())
        assert snap_set.state == INCOMPLETE and not snap_set.restorable
        assert "no snapshot of member 1 of 2" in snap_set.problems
        assert any("not every volume was snapshotted" in p for p in snap_set.problems)
        assert next(iter(snap_set.members.values())).tags[SNAPSHOT_INCOMPLETE_TAG]
        listed = bsud(h, "snapshots", "snapf")
        assert "incomplete" in listed.stdout and "1/2 volumes" in listed.stdout
        assert mounts.mount_at(str(h.mount)) is not None
        assert h.stop() == 0
    finally:
        h.close()


def test_a_set_restored_to_a_new_drive_beside_the_live_one_holds_the_data_as_of_the_snapshot(drives: Drives):
    live = drives.two_volumes("orig")
    at_snapshot = checksums(live.mount)
    set_id = drives.snapshot(live)
    live.fill("after.bin", 50)  # the live drive goes on; the copy must not see this

    copy = drives.restored(live, "copy", set_id, **{"max-used-space-perc": 50, "min-used-space-perc": 5,
                                                     "disk-scale-factor-perc": 100})
    copy.start()
    st = copy.wait_online(volumes=2, timeout=180)
    assert checksums(copy.mount) == at_snapshot
    assert checksums(live.mount) == {**at_snapshot, "after.bin": checksums(live.mount)["after.bin"]}
    entry_live, entry_copy = mounts.mount_at(str(live.mount)), mounts.mount_at(str(copy.mount))
    assert entry_live is not None and entry_copy is not None
    shown = subprocess.run(["btrfs", "filesystem", "show", str(copy.mount)], capture_output=True, text=True).stdout
    original = subprocess.run(["btrfs", "filesystem", "show", str(live.mount)], capture_output=True,
                              text=True).stdout
    assert "Label: 'bsud-copy'" in shown and "Label: 'bsud-orig'" in original
    assert shown.split("uuid: ")[1].split()[0] != original.split("uuid: ")[1].split()[0]
    log = copy.log_path.read_text()
    assert '"action": "RestoreVolumes"' in log and '"action": "AdoptRestored"' in log
    assert '"action": "MakeFilesystem"' not in log, "a restored drive is never formatted"
    # the restored drive scales like any other: written past max-used-space-perc (50 %), it grows
    need = int(0.5 * st["size_bytes"] - st["used_bytes"]) // MIB + 300
    copy.fill("grow.bin", need)
    copy.wait_for("a third volume", lambda s: len(s.get("volumes", [])) == 3 and s.get("action") == "Idle",
                  timeout=180)
    assert all(v["member"] for v in copy.status()["volumes"]) and st["name"] == "copy"
    assert copy.stop() == 0 and live.stop() == 0


def test_an_incomplete_set_is_never_restored(drives: Drives):
    live = drives.two_volumes("orig2")
    config = load_config(live.config_path)
    FailingSecond.calls = 0
    with pytest.raises(BackupError):
        take_set(config, "orig2", FailingSecond(config.cloud))
    (snap_set,) = group(LocalCloud(config.cloud).list_snapshots())
    copy = drives.restored(live, "copy2", snap_set.id)
    copy.start()
    st = copy.wait_for("the refusal", lambda s: "is incomplete" in (s.get("last_error") or ""), timeout=60)
    assert "never restored" in st["last_error"] and st.get("volumes", []) == []
    assert not [v for v in LocalCloud(config.cloud).list_volumes() if v.drive == "copy2"]
    assert copy.stop() == 0 and live.stop() == 0


def test_isolated_commands_see_only_the_given_devices_and_the_host_keeps_its_dev(btrfs_mount: Path, workdir: Path):
    from bsud.backup.isolate import isolated
    from bsud.runner import Runner

    other = workdir / "other.img"
    subprocess.run(["truncate", "-s", "300M", str(other)], check=True)
    loop = subprocess.run(["losetup", "--find", "--show", str(other)], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        subprocess.run(["mkfs.btrfs", "-q", "-f", loop], check=True, capture_output=True)
        everywhere = subprocess.run(["blkid", "-c", "/dev/null", "-t", "TYPE=btrfs", "-o", "device"],
                                    capture_output=True, text=True).stdout.split()
        assert loop in everywhere and len(everywhere) >= 2
        seen = isolated(Runner(), [loop], [["blkid", "-c", "/dev/null", "-t", "TYPE=btrfs", "-o", "device"],
                                           ["ls", "/dev"]]).split()
        assert seen == [loop, loop.rsplit("/", 1)[1], "null"]
        assert os.path.exists("/dev/null") and os.path.exists(loop) and len(os.listdir("/dev")) > 10
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def test_a_filesystem_frozen_by_another_tool_is_refused_and_left_frozen(btrfs_mount: Path):
    subprocess.run(["fsfreeze", "--freeze", str(btrfs_mount)], check=True)
    try:
        with pytest.raises(FreezeError) as info:
            with frozen(str(btrfs_mount)):
                pass
        assert "frozen already" in str(info.value)
        time.sleep(0.5)
        thread, done = write_later(btrfs_mount / "held.bin")
        time.sleep(1.0)
        assert done == [], "bsud (or its guard) thawed another tool's freeze"
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(btrfs_mount)], check=True)
    thread.join(10)
    assert done


def test_a_freeze_thawed_by_something_else_meanwhile_is_an_error(btrfs_mount: Path):
    # e.g. a daemon starting, or another tool's fsfreeze -u, while the volumes are snapshotted: not one instant
    with pytest.raises(FreezeError, match="was thawed by something else while it was to be frozen"):
        with frozen(str(btrfs_mount)):
            subprocess.run(["fsfreeze", "--unfreeze", str(btrfs_mount)], check=True)
    thread, done = write_later(btrfs_mount / "after.bin")
    thread.join(10)
    assert done


def test_the_daemons_start_leaves_a_running_snapshots_freeze_to_it(btrfs_loop, workdir: Path):
    loop, point = btrfs_loop
    subprocess.run(["btrfs", "filesystem", "label", loop, label_for("snapd")], check=True)
    subprocess.run(["mount", loop, point], check=True)
    config = workdir / "bsud.json"
    status = str(workdir / "status.json")
    config.write_text(json.dumps({
        "cloud": {"provider": "local", "state-dir": str(workdir / "state"), "instance-id": "i-lock"},
        "daemon": {"status-file": status},
        "drives": [{"name": "snapd", "target": "online", "mount-path": point}]}))
    drives = load_config(str(config)).drives
    with snapshot_lock(status, "snapd"), frozen(point):
        assert thaw_drives_left_frozen(drives, Runner(), status) == []
        thread, done = write_later(Path(point) / "held.bin")
        time.sleep(0.5)
        assert done == [], "the daemon's start thawed a running snapshot's freeze"
    thread.join(10)
    assert done
    # no snapshot running: a freeze left behind is the daemon's to thaw
    subprocess.run(["fsfreeze", "--freeze", point], check=True)
    assert thaw_drives_left_frozen(drives, Runner(), status) == ["snapd"]


def test_a_freeze_the_guard_ended_at_its_limit_is_an_error_not_a_broken_pipe(btrfs_mount: Path):
    with pytest.raises(FreezeError, match="the guard thaws at 1 s"):
        with frozen(str(btrfs_mount), max_seconds=1):
            time.sleep(2.5)  # an API call hanging: the guard thaws and leaves


def test_a_set_of_a_drive_not_mounted_records_its_filesystems_uuid_from_its_device(workdir: Path):
    # without it, a restore beside the drive could not give the copy a new UUID: two filesystems of one UUID
    h = DaemonHarness(workdir, drive="snapu")
    try:
        h.start()
        h.wait_online(volumes=1)
        uuid = subprocess.run(["findmnt", "-n", "-o", "UUID", str(h.mount)], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert h.stop() == 0
        subprocess.run(["umount", str(h.mount)], check=True)
        config = load_config(h.config_path)
        taken = take_set(config, "snapu", LocalCloud(config.cloud))
        assert taken.freeze_seconds is None  # nothing mounted: nothing to freeze
        assert uuid and taken.set.fs_uuid == uuid and taken.set.restorable
    finally:
        h.close()


def test_a_set_deleted_once_its_volumes_are_made_is_adopted_from_their_tags(drives: Drives):
    # an operator's delete-snapshot-set (or the original's --keep) between RestoreVolumes and the adoption: the data
    # is all on the new volumes — the drive comes online from what their tags say, never blocked for good
    live = drives.two_volumes("orig3")
    at_snapshot = checksums(live.mount)
    set_id = drives.snapshot(live)
    copy = drives.restored(live, "copy3", set_id, **{"max-used-space-perc": 50, "min-used-space-perc": 5})
    copy.start(crash="before:action:AdoptRestored")
    assert copy.wait_exit(180) == -signal.SIGKILL
    gone = bsud(live, "delete-snapshot-set", "--yes", set_id)
    assert gone.returncode == 0, gone.stderr
    copy.start()
    copy.wait_online(volumes=2, timeout=180)
    assert checksums(copy.mount) == at_snapshot
    assert "snapshot set gone since its volumes were made: adopting them as their tags tell" in copy.tail(300)
    assert copy.stop() == 0 and live.stop() == 0
