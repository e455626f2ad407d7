"""A burst pre-empts a removal, at the runner's seam: the layouts' removals replayed from command transcripts, the
sampler's request made from another thread while the long move "runs".

- lvm: ``pvmove`` is stopped by ``pvmove --abort <PV>``; nothing after it runs (no vgreduce), the step ends with
  :class:`Preempted`; a request while ``lvreduce`` runs keeps ``pvmove`` from starting.
- btrfs: ``btrfs device remove`` is stopped by ``btrfs device remove cancel``; while it runs, the sampler's space
  is counted without the device.
- a stop asked before the move's command got going is asked again; a move failing by itself is a failure.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from bsud.config import DriveConfig, Layout, Provider, Target
from bsud.errors import CommandError
from bsud.host import preempt
from bsud.host.layouts import BtrfsLayout, LvmLayout
from bsud.host.lvm import _LV_FIELDS, _PV_FIELDS, _VG_FIELDS
from bsud.host.preempt import Preempted, Preemption
from bsud.host.space import read_space
from bsud.reconcile.execute import Executor
from bsud.reconcile.model import Grow, Outcome

from .transcript import Reply, TranscriptRunner

DATA = Path(__file__).resolve().parents[1] / "data"
MNT = "/nonexistent/bsud-preempt-test"   # not a directory here: `btrfs filesystem show` is asked about it as is
GIB, MIB = 1024**3, 1024**2
EXTENT = 4 * MIB


def report(kind: str, rows: list[dict[str, str]]) -> str:
    return json.dumps({"report": [{kind: rows}]})


def pvs_argv(*devices: str) -> tuple[str, ...]:
    return ("lvm", "pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _PV_FIELDS, *devices)


VGS = ("lvm", "vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _VG_FIELDS, "d")
LVS = ("lvm", "lvs", "-a", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _LV_FIELDS, "d")
VDB = {"pv_name": "/dev/vdb", "vg_name": "d", "pv_size": str(GIB - EXTENT), "pv_free": "0", "pv_uuid": "b",
       "dev_size": str(GIB)}
VDC = {"pv_name": "/dev/vdc", "vg_name": "d", "pv_size": str(2 * GIB - EXTENT), "pv_free": str(GIB), "pv_uuid": "c",
       "dev_size": str(2 * GIB)}


def lv(size: int) -> str:
    return report("lv", [{"lv_name": "bsud", "vg_name": "d", "lv_size": str(size), "lv_path": "/dev/d/bsud",
                          "lv_attr": "-wi-ao----", "lv_active": "active", "move_pv": "", "copy_percent": "",
                          "devices": "/dev/vdb(0),/dev/vdc(0)"}])


def lvm_removal(lv_size: int, lvreduce_then=None) -> list[Reply]:
    """The lvm layout's removal of /dev/vdc (2 GiB, 1 GiB of it used) from VG d, up to its pvmove."""
    vg = report("vg", [{"vg_name": "d", "vg_uuid": "u", "vg_size": str(3 * GIB - 2 * EXTENT), "vg_free": str(GIB),
                        "vg_extent_size": str(EXTENT), "pv_count": "2", "lv_count": "1"}])
    target = GIB - EXTENT  # vdb's room: the LV's size once reduced
    replies = [
        Reply(VGS, stdout=vg),
        Reply(pvs_argv("/dev/vdc"), stdout=report("pv", [VDC])),
        Reply(LVS, stdout=lv(lv_size)),
        Reply(pvs_argv(), stdout=report("pv", [VDB, VDC])),
    ]
    if lv_size > target:
        show = "Label: 'bsud-d'  uuid: 6b141b06-4e24-4ad1-a6cc-39b0fbef6422\n\tTotal devices 1 FS bytes used 52641792\n"
        replies += [
            Reply(("btrfs", "filesystem", "show", "--raw", MNT),
                  stdout=show + f"\tdevid    1 size {lv_size} used {GIB} path /dev/mapper/d-bsud\n"),
            Reply(("btrfs", "filesystem", "resize", f"1:{target - EXTENT}", MNT)),
            Reply(("btrfs", "filesystem", "show", "--raw", MNT),
                  stdout=show + f"\tdevid    1 size {target - EXTENT} used {GIB} path /dev/mapper/d-bsud\n"),
            Reply(("lvm", "lvreduce", "--yes", "-L", f"{target}b", "d/bsud"), then=lvreduce_then),
        ]
    return replies


# What `lvm pvmove -i 5 /dev/vdc` printed, and what it printed once `pvmove --abort /dev/vdc` had removed its
# pvmove LV (lvm2's poll loop: the LV gone, it ends — exit 0).
PVMOVE = ("lvm", "pvmove", "-i", "5", "/dev/vdc")
PVMOVE_ABORTED = ("  /dev/vdc: Moved: 12.50%\n"
                  "  /dev/vdc: No pvmove in progress - already finished or aborted.\n")
ABORT = ("lvm", "pvmove", "--abort", "/dev/vdc")


def request_when_moving(preemption: Preemption, runner: TranscriptRunner, argv: tuple[str, ...],
                        why: str = "full in 4.0 s at 250.0 MB/s",
                        leaving: list[int] | None = None) -> threading.Thread:
    """The sampler: asks for the pre-emption once ``argv`` runs (from its own thread), noting in ``leaving`` the
    capacity then counted out."""
    def sampler() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not runner.ran(*argv):
            time.sleep(0.01)
        if leaving is not None:
            leaving.append(preemption.leaving)
        preemption.request(why)
    thread = threading.Thread(target=sampler, name="sample-d")
    thread.start()
    return thread


def test_lvm_pvmove_is_aborted_and_nothing_after_it_runs():
    runner = TranscriptRunner([*lvm_removal(GIB - EXTENT), Reply(PVMOVE, stdout=PVMOVE_ABORTED, blocks_until=ABORT),
                               Reply(ABORT)])
    layout = LvmLayout("d", runner)
    sampler = request_when_moving(layout.preemption, runner, PVMOVE)
    with pytest.raises(Preempted) as stopped:
        layout.remove_device("/dev/vdc", MNT)
    sampler.join()
    assert runner.ran(*ABORT) == 1
    abort = next(c for c in runner.calls if c.argv == ABORT)
    assert abort.thread == "preempt-d"   # neither the step thread nor the sampler waits on it
    assert runner.argvs()[-2:] == [PVMOVE, ABORT]
    assert not any(a[:2] == ("lvm", "vgreduce") or a[:2] == ("lvm", "lvextend") for a in runner.argvs())
    assert stopped.value.waited is not None and stopped.value.waited < 5
    assert layout.preemption.requested is None   # the removal's span ended: the next removal starts afresh


def test_lvm_request_during_lvreduce_keeps_pvmove_from_starting():
    layout: LvmLayout
    replies = lvm_removal(2 * GIB, lvreduce_then=lambda: layout.preemption.request("used 86.0% >= 85%"))
    runner = TranscriptRunner([*replies, Reply(PVMOVE)])
    layout = LvmLayout("d", runner)
    with pytest.raises(Preempted, match="not started"):
        layout.remove_device("/dev/vdc", MNT)
    assert runner.ran("lvm", "lvreduce", "--yes", "-L", f"{GIB - EXTENT}b", "d/bsud") == 1
    assert runner.ran(*PVMOVE) == 0


def test_lvm_shrink_is_cancelled_and_its_capacity_counted_out_meanwhile():
    """The btrfs shrink before lvreduce relocates too: cancelled the same way (the size goes back); lvreduce never
    runs. While it runs, the space the sampler reads is without what the shrink takes away."""
    target = GIB - 2 * EXTENT
    resize = ("btrfs", "filesystem", "resize", f"1:{target}", MNT)
    cancel = ("btrfs", "filesystem", "resize", "cancel", MNT)
    replies = [r for r in lvm_removal(2 * GIB) if r.argv[:3] != ("btrfs", "filesystem", "resize")]
    replies.insert(5, Reply(resize, rc=1, stderr=f"ERROR: unable to resize '{MNT}': Operation canceled",
                            blocks_until=cancel))
    runner = TranscriptRunner([*replies, Reply(cancel, rc=1, stderr="ERROR: resize operation failed: "
                                                                    "Operation canceled")])
    layout = LvmLayout("d", runner)
    seen: list[int] = []
    thread = request_when_moving(layout.preemption, runner, resize, "full in 3.1 s at 300.0 MB/s", seen)
    with pytest.raises(Preempted, match="btrfs shrink stopped"):
        layout.remove_device("/dev/vdc", MNT)
    thread.join()
    assert seen == [2 * GIB - target]
    assert runner.ran(*cancel) == 1
    assert not any(a[:2] == ("lvm", "lvreduce") for a in runner.argvs())


SHOW_TWO = (DATA / "btrfs_show_two_devices.txt").read_text()
REMOVE = ("btrfs", "device", "remove", "/dev/loop1", MNT)
CANCEL = ("btrfs", "device", "remove", "cancel", MNT)


def test_btrfs_device_remove_is_cancelled_and_counted_out_while_it_runs():
    runner = TranscriptRunner([
        Reply(("btrfs", "filesystem", "show", "--raw", MNT), stdout=SHOW_TWO),
        Reply(REMOVE, rc=1, stderr="ERROR: error removing device '/dev/loop1': Operation canceled",
              blocks_until=CANCEL),
        Reply(CANCEL, rc=1, stderr="ERROR: error removing device 'cancel': Operation canceled"),
    ])
    layout = BtrfsLayout("d", runner)
    leaving: list[int] = []
    thread = request_when_moving(layout.preemption, runner, REMOVE, "full in 9.8 s at 250.0 MB/s", leaving)
    with pytest.raises(Preempted, match="btrfs device remove /dev/loop1 stopped"):
        layout.remove_device("/dev/loop1", MNT)
    thread.join()
    assert leaving == [1073741824]       # devid 2's size, out of the writers' reach while it is removed
    assert layout.preemption.leaving == 0  # and back once the removal is stopped
    assert runner.ran(*CANCEL) == 1


def test_space_read_during_a_removal_is_without_the_leaving_device():
    fs_dir = DATA / "sysfs_btrfs" / "idle"
    whole = read_space(fs_dir)
    during = read_space(fs_dir, leaving=whole.size // 2)
    assert during.size == whole.size - whole.size // 2
    assert during.data_free < whole.data_free


def test_a_stop_asked_too_early_is_asked_again(monkeypatch):
    """The sampler asked in the instant pvmove started, before its pvmove LV existed: the abort found nothing
    (lvm exits 5); asked again, it stops the move."""
    monkeypatch.setattr(preempt, "STOP_RETRY_SECONDS", 0.05)
    runner = TranscriptRunner([*lvm_removal(GIB - EXTENT), Reply(PVMOVE, stdout=PVMOVE_ABORTED, blocks_until=ABORT)])
    first = Reply(ABORT, rc=5, stderr="  Failed to find pvmove LV for /dev/vdc")
    runner.replies += [first, Reply(ABORT)]
    layout = LvmLayout("d", runner)
    sampler = request_when_moving(layout.preemption, runner, PVMOVE)
    with pytest.raises(Preempted):
        layout.remove_device("/dev/vdc", MNT)
    sampler.join()
    assert runner.ran(*ABORT) == 2


def test_a_move_failing_by_itself_is_a_failure_not_a_preemption():
    runner = TranscriptRunner([*lvm_removal(GIB - EXTENT),
                               Reply(PVMOVE, rc=5, stderr="  Insufficient free space: 256 extents needed")])
    layout = LvmLayout("d", runner)
    with pytest.raises(CommandError, match="Insufficient free space"):
        layout.remove_device("/dev/vdc", MNT)


def test_no_removal_no_preemption():
    p = Preemption("d")
    assert p.request("used 90.0% >= 85%") is False
    assert p.leaving == 0 and p.requested is None


def test_one_request_per_removal():
    p = Preemption("d")
    stopped = threading.Event()
    stops: list[int] = []

    def stop() -> None:
        stops.append(1)
        stopped.set()
    with pytest.raises(Preempted):
        with p.move("pvmove /dev/vdc", stop, leaving=0):
            assert p.request("a") is True
            assert p.request("b") is False   # the sampler asks on every sample: one stop
            assert stopped.wait(5)           # the move's command ends once stopped
    p.join_stopper(5)
    assert stops == [1]


class _StoppedLayout:
    """A layout whose grow's move (a resumed pvmove) is pre-empted."""

    def grow(self, mount_point: str) -> bool:
        raise Preempted("pvmove (resumed) /dev/vdc stopped 0.4 s after the drive needed space", 0.4)


def test_executor_reports_a_preemption_as_its_outcome_not_a_failure():
    spec = DriveConfig(name="d", target=Target.ONLINE, mount_path=MNT, layout=Layout.LVM)
    executor = Executor(spec, cloud=None, layout=_StoppedLayout(), provider=Provider.LOCAL)  # type: ignore[arg-type]
    assert executor.run(Grow(reason="the filesystem can use more space")) is Outcome.PREEMPTED


def test_a_relocation_in_flight_is_not_taken_for_a_writer():
    """btrfs counts the chunk being relocated twice (and its free part read-only) until it is done: up to a chunk
    above the data, rising at the relocation's speed — which scale_up_reason reads as a fast writer. Within that
    allowance, above the lowest used seen during the move, the move goes on; beyond it, a writer: stopped."""
    p = Preemption("d")
    stops: list[str] = []
    cancelled = threading.Event()
    chunk = GIB
    base = 3 * GIB // 2
    assert p.sampled(base, 2 * GIB, None) is False  # before the removal: its baseline
    with pytest.raises(Preempted):
        with p.move("btrfs device remove /dev/vdc", lambda: (stops.append("cancel"), cancelled.set()),
                    leaving=10 * GIB, allowance=chunk):
            # chunk after chunk: read-only (+ its free part), copied (+ its data), gone (back to the data) — the
            # first sample already a chunk up (measured: 1 GiB + 64 KiB within 0.75 s, read as 1388 MB/s)
            for used in (base + chunk, base + 700 * MIB, base, base + 900 * MIB, base + 200 * MIB):
                assert p.sampled(used, 2 * GIB, "full in 0.7 s at 1388.5 MB/s") is False
            # a writer fills in as the chunk in flight goes: the used bytes never come back down to the baseline,
            # and rise beyond what a chunk in flight can explain
            for used in (base + 600 * MIB, base + 900 * MIB):
                assert p.sampled(used, GIB, "full in 12.8 s at 67.2 MB/s") is False
            assert p.sampled(base + chunk + 200 * MIB, 900 * MIB, "full in 3.0 s at 800.0 MB/s") is True
            assert cancelled.wait(5)  # the device remove ends once cancelled
    assert stops == ["cancel"]


def test_a_writer_btrfs_makes_wait_is_seen_by_the_free_bytes():
    """Little room on the other volume: a chunk in flight and a writer btrfs makes wait for space keep the used bytes
    under the allowance (measured: 2.1 GB of room, the free bytes down to 64 MiB). Under 512 MiB: stopped."""
    p = Preemption("d")
    cancelled = threading.Event()
    base = 3 * GIB // 2
    assert p.sampled(base, 2 * GIB, None) is False
    with pytest.raises(Preempted):
        with p.move("btrfs device remove /dev/vdc", cancelled.set, leaving=10 * GIB, allowance=GIB + GIB // 8):
            assert p.sampled(base + GIB, GIB, "full in 0.7 s at 1388.5 MB/s") is False
            assert p.sampled(base + GIB, 600 * MIB, "used 86.0% >= 85%") is False
            assert p.sampled(base + GIB + 30 * MIB, 64 * MIB, "used 98.3% >= 85%") is True
            assert cancelled.wait(5)


def test_a_pvmove_is_stopped_at_the_first_sample_that_needs_space():
    """pvmove moves extents under btrfs: nothing of it shows in btrfs's space — no allowance."""
    p = Preemption("d")
    stopped = threading.Event()
    with pytest.raises(Preempted):
        with p.move("pvmove /dev/vdc", stopped.set):
            assert p.sampled(GIB, 2 * GIB, None) is False
            assert p.sampled(GIB + MIB, 2 * GIB, "full in 20.0 s at 30.0 MB/s") is True
            assert stopped.wait(5)


def test_the_sampler_stops_the_move_when_the_drive_needs_space(tmp_path):
    """The seam between the drive's threads: the sampler (DriveWorker.sample) reads the live space, finds the drive
    filling fast, and stops the removal's move the step thread is in."""
    from types import SimpleNamespace

    from bsud.cloud.local import LocalCloud
    from bsud.config import CloudSettings, DaemonSettings, NfsSettings
    from bsud.host.space import Pool, Space
    from bsud.reconcile.model import DriveObs
    from bsud.reconcile.observe import CloudSnapshot
    from bsud.worker import DriveWorker, WorkerContext

    cloud = LocalCloud(CloudSettings(provider="local", state_dir=str(tmp_path), instance_id="i-x"))
    config = SimpleNamespace(cloud=SimpleNamespace(provider=Provider.LOCAL), daemon=DaemonSettings(),
                             nfs=NfsSettings())
    context = WorkerContext(cloud=cloud, snapshot=CloudSnapshot(cloud), config=lambda: config)  # type: ignore
    spec = DriveConfig(name="d", target=Target.ONLINE, mount_path=MNT, layout=Layout.LVM)
    worker = DriveWorker(context, spec)
    rec = worker.reconciler
    rec.last_obs = DriveObs(name="d", mounted=True)
    used = [2 * GIB]

    def live_usage(mount_point: str) -> Space:  # a 4 GiB drive (the LV shrunk for the move) being written
        return Space(size=4 * GIB, data=Pool(allocated=4 * GIB, raw_allocated=4 * GIB, used=used[0]),
                     metadata=Pool(0, 0, 0), system=Pool(0, 0, 0))
    rec.layout.live_usage = live_usage  # type: ignore[method-assign]
    stopped = threading.Event()
    with pytest.raises(Preempted):
        with rec.layout.preemption.move("pvmove /dev/vdc", stopped.set):
            worker.sample()
            assert not stopped.is_set()  # nothing written yet: the move goes on
            time.sleep(0.2)
            used[0] += 200 * MIB     # 1 GB/s: full in 2 s, sooner than 3 grow times
            worker.sample()
            assert stopped.wait(5)
    assert worker.urgent.is_set()     # and the drive's step comes at once


def test_the_pvmove_after_a_shrink_is_not_stopped_for_the_shrink_s_echo(monkeypatch):
    """lvm: the btrfs shrink relocates (its artifacts in the rate for the meter's window), then pvmove runs: within
    that window the shrink's allowance still holds; after it, the first sample that needs space stops the pvmove."""
    monkeypatch.setattr(preempt, "RELOCATION_ECHO_SECONDS", 0.3)
    p = Preemption("d")
    stopped = threading.Event()
    with pytest.raises(Preempted):
        with p.span():
            with p.move("btrfs shrink", lambda: None, leaving=GIB, allowance=GIB):
                assert p.sampled(GIB, 2 * GIB, None) is False
                assert p.sampled(GIB + 800 * MIB, 2 * GIB, "full in 5.0 s at 400.0 MB/s") is False
            with p.move("pvmove /dev/vdc", stopped.set):
                assert p.sampled(GIB + 100 * MIB, 2 * GIB, "full in 9.0 s at 400.0 MB/s") is False  # the echo
                time.sleep(0.35)
                assert p.sampled(GIB + 100 * MIB, 2 * GIB, "full in 20.0 s at 30.0 MB/s") is True
                assert stopped.wait(5)


def test_a_relocation_onto_less_room_than_its_chunk_is_not_stopped_by_the_floor():
    """A removal down to a small volume (100 MiB moving onto 1 GiB: the host lane's lifecycle): the chunk in flight
    alone takes the free bytes under the floor. Stopping it there stopped every attempt, for ever; a writer is seen
    there once the used bytes outgrow what the chunk in flight explains."""
    p = Preemption("d")
    cancelled = threading.Event()
    base = 100 * MIB
    assert p.sampled(base, 5 * GIB, None) is False
    with pytest.raises(Preempted):
        with p.move("btrfs device remove /dev/vdc", cancelled.set, leaving=5 * GIB, allowance=GIB + GIB // 8):
            assert p.sampled(base, GIB - base, None) is False
            # measured: used 759 MB, free 190 MB within 0.3 s of the remove ("full in 0.3 s at 435.2 MB/s")
            assert p.sampled(759_169_024, 190_447_616, "full in 0.3 s at 435.2 MB/s (used 79.9%)") is False
            assert not cancelled.is_set()
            assert p.sampled(base + GIB + GIB // 4, 32 * MIB, "used 98.0% >= 85%") is True
            assert cancelled.wait(5)


def test_the_pvmove_after_a_shrink_is_stopped_by_the_floor_during_the_shrinks_echo():
    """lvm removal: btrfs shrink (a relocation, with its allowance), then pvmove in the same removal. The shrink's
    allowance still holds for the rate's window after it (its echo), but its chunk is gone: free bytes under the
    floor are a writer's, on a drive the shrink left small (the VM lane: 1.6 GB left, the stop held back 7 s by the
    echo, ENOSPC before the LV grew back)."""
    p = Preemption("d")
    stopped = threading.Event()
    base = 922 * MIB
    assert p.sampled(base, 2 * GIB, None) is False
    with pytest.raises(Preempted):
        with p.span():
            with p.move("btrfs shrink", lambda: None, leaving=1600 * MIB, allowance=GIB + GIB // 8):
                assert p.sampled(base + 300 * MIB, 400 * MIB, "full in 0.7 s at 900.0 MB/s") is False
            with p.move("pvmove /dev/vdb", stopped.set):
                # measured: 966 MB used, 521 MB free, 27 MB/s: a writer in a drive shrunk to 1.6 GB
                assert p.sampled(966_131_712, 520_749_056, "full in 16.5 s at 27.4 MB/s (used 65.0%)") is True
                assert stopped.wait(5)
