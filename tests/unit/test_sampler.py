"""The sampler: one thread for every drive, and a sample that ends after a few ``pread`` when nothing was written.

A drive's sample (``DriveWorker.sample``) is fed a fake layout (its space and fingerprint set by the test) and a fake
clock: an unchanged fingerprint skips the full read; a changed one — a writer's first write — goes through it all
at once, with the same rate and the same trigger as sampling in full every time; and the meters see the time pass.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from bsud import worker as worker_module
from bsud.cloud.local import LocalCloud
from bsud.config import CloudSettings, DaemonSettings, DriveConfig, Layout, NfsSettings, Provider, Target
from bsud.host.space import Pool, Space
from bsud.reconcile.model import DriveObs
from bsud.reconcile.observe import CloudSnapshot
from bsud.reconcile.pace import RateMeter
from bsud.sampler import Sampler
from bsud.worker import FULL_SAMPLE_SECONDS, SAMPLER_STUCK_SECONDS, DriveWorker, WorkerContext

GIB, MIB = 1024**3, 1024**2
INTERVAL = 0.25


class Clock:
    """``time`` for bsud.worker: monotonic() is what the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Drive:
    """A mounted 4 GiB drive whose live space and fingerprint the test sets; counts the full reads."""

    def __init__(self, used: int = GIB) -> None:
        self.used = used
        self.fingerprint: tuple[object, ...] | None = ("counters", used)
        self.full_reads = 0

    def live_usage(self, mount_point: str) -> Space:
        self.full_reads += 1
        return Space(size=4 * GIB, data=Pool(allocated=4 * GIB, raw_allocated=4 * GIB, used=self.used),
                     metadata=Pool(0, 0, 0), system=Pool(0, 0, 0))

    def live_fingerprint(self, mount_point: str) -> tuple[object, ...] | None:
        return self.fingerprint

    def write(self, nbytes: int) -> None:
        self.used += nbytes
        self.fingerprint = ("counters", self.used)


def make_worker(tmp_path, name: str = "d") -> DriveWorker:
    cloud = LocalCloud(CloudSettings(provider="local", state_dir=str(tmp_path), instance_id="i-x"))
    config = SimpleNamespace(cloud=SimpleNamespace(provider=Provider.LOCAL), daemon=DaemonSettings(),
                             nfs=NfsSettings())
    context = WorkerContext(cloud=cloud, snapshot=CloudSnapshot(cloud), config=lambda: config)  # type: ignore
    spec = DriveConfig(name=name, target=Target.ONLINE, mount_path=f"/mnt/{name}", layout=Layout.BTRFS)
    worker = DriveWorker(context, spec)
    worker.reconciler.last_obs = DriveObs(name=name, mounted=True)
    return worker


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(worker_module, "time", fake)
    # the page cache and the devices as an idle machine has them: no dirty room figure, nothing written
    monkeypatch.setattr(worker_module, "page_cache", lambda: (None, False))
    monkeypatch.setattr(worker_module, "bytes_written", lambda devices: {})
    return fake


@pytest.fixture
def drive_worker(tmp_path, clock) -> tuple[DriveWorker, Drive]:
    worker = make_worker(tmp_path)
    drive = Drive()
    worker.reconciler.layout.live_usage = drive.live_usage  # type: ignore[method-assign]
    worker.reconciler.layout.live_fingerprint = drive.live_fingerprint  # type: ignore[method-assign]
    return worker, drive


def tick(worker: DriveWorker, clock: Clock, n: int = 1) -> None:
    for _ in range(n):
        clock.now += INTERVAL
        assert worker.sample() is True


def test_an_unchanged_fingerprint_skips_the_full_read_and_the_rate_sees_the_time_pass(drive_worker, clock):
    worker, drive = drive_worker
    tick(worker, clock)
    assert drive.full_reads == 1
    tick(worker, clock, 10)
    assert drive.full_reads == 1                      # nothing written: eight preads, no more
    meter = worker.reconciler.meter
    assert meter is not None and len(meter.samples) == 11 and {u for _, u in meter.samples} == {GIB}
    assert meter.rate() == 0.0


def test_a_changed_fingerprint_is_a_full_sample_at_once_with_the_same_rate_and_trigger(drive_worker, clock):
    """A writer starts after a long idle spell: the very sample that sees its first write reads the space in full,
    measures the rate a meter fed every sample would, and wakes the drive — as before the fast path."""
    worker, drive = drive_worker
    dense = RateMeter(worker.context.config().daemon.rate_peak_seconds)
    for _ in range(40):                               # 10 s idle, every sample but the periodic ones skipped
        tick(worker, clock)
        dense.add(clock.now, drive.used)
    reads = drive.full_reads
    assert reads <= 1 + 10 / FULL_SAMPLE_SECONDS
    assert not worker.urgent.is_set()
    drive.write(GIB)                                  # in 0.25 s: seen as 1 GiB over the 2 s window, 2 GiB left
    tick(worker, clock)
    dense.add(clock.now, drive.used)
    assert drive.full_reads == reads + 1
    assert worker.reconciler.pace().write_rate == dense.rate() == pytest.approx(GIB / 2)
    assert worker.reconciler.status.write_rate == round(dense.rate())
    assert worker.urgent.is_set() and worker.wake.is_set()


def test_the_rate_and_its_peak_are_those_of_a_meter_fed_every_sample_all_along(drive_worker, clock):
    """Idle, a slow writer, a pause, a burst, idle again: at every sample the drive's rate and recent peak are what a
    meter fed on every sample says (the skipped ones feed it the unchanged used bytes)."""
    worker, drive = drive_worker
    dense = RateMeter(worker.context.config().daemon.rate_peak_seconds)
    meter = worker.reconciler.meter
    assert meter is not None
    for seconds, per_sample in ((20, 0), (5, 2 * MIB), (8, 0), (1, 100 * MIB), (70, 0)):
        for _ in range(int(seconds / INTERVAL)):
            if per_sample:
                drive.write(per_sample)
            tick(worker, clock)
            dense.add(clock.now, drive.used)
            assert (meter.rate(), meter.peak()) == (dense.rate(), dense.peak())
    assert meter.peak() == 0.0


def test_a_drive_that_needs_space_is_sampled_in_full_every_time(drive_worker, clock):
    worker, drive = drive_worker
    drive.used = drive.used + int(2.5 * GIB)          # 3.5 GiB of 4: over max-used-space-perc
    drive.fingerprint = ("counters", drive.used)
    tick(worker, clock, 4)
    assert drive.full_reads == 4
    assert worker.last_full is not None and worker.last_full.needs_space


def test_a_new_observation_or_config_is_a_full_sample(drive_worker, clock):
    worker, drive = drive_worker
    tick(worker, clock, 2)
    assert drive.full_reads == 1
    worker.reconciler.last_obs = DriveObs(name="d", mounted=True)    # a step ran: grow time, size hint, members
    tick(worker, clock, 2)
    assert drive.full_reads == 2
    worker.reconciler.spec = worker.reconciler.spec.model_copy(update={"max_used_space_perc": 90})  # a reload
    tick(worker, clock, 2)
    assert drive.full_reads == 3


def test_the_space_is_read_in_full_every_few_seconds_anyway(drive_worker, clock):
    """What moves without a write (chunks made read-only by a scrub, the devices' sizes) and the status's falling
    rate are refreshed: a full read every FULL_SAMPLE_SECONDS."""
    worker, drive = drive_worker
    seconds = 60.0
    tick(worker, clock, int(seconds / INTERVAL))
    full = 1 + seconds / FULL_SAMPLE_SECONDS
    assert full - 1 <= drive.full_reads <= full + 1


def test_without_a_fingerprint_every_sample_is_full(drive_worker, clock):
    worker, drive = drive_worker
    drive.fingerprint = None                          # sysfs cannot say (the `btrfs filesystem usage` fallback)
    tick(worker, clock, 3)
    assert drive.full_reads == 3


def test_a_drive_not_mounted_is_not_read(drive_worker, clock):
    worker, drive = drive_worker
    worker.reconciler.last_obs = DriveObs(name="d", mounted=False)
    tick(worker, clock, 3)
    assert drive.full_reads == 0


def test_a_silent_sampler_is_a_stuck_drive(drive_worker, clock):
    worker, _ = drive_worker
    worker.sample_once(clock.now, INTERVAL)
    assert worker.overdue(worker.sampled + 60) is None
    assert "no usage sample" in (worker.overdue(worker.sampled + SAMPLER_STUCK_SECONDS + 1) or "")


# -- one thread for every drive -----------------------------------------------------------------------------------


def test_one_turn_samples_every_drive_due_and_each_is_due_on_the_next_beat(tmp_path, clock):
    workers = [make_worker(tmp_path, f"d{i}") for i in range(10)]
    counts = {w.reconciler.spec.name: 0 for w in workers}
    for w in workers:
        def sample(w: DriveWorker = w) -> bool:
            counts[w.reconciler.spec.name] += 1
            clock.now += 0.001                         # sampling takes time: the next beat is still on time
            return True
        w.sample = sample  # type: ignore[method-assign]
    sampler = Sampler(lambda: workers, lambda: INTERVAL, threading.Event())
    beat = clock.now
    for _ in range(4):
        sampler.turn(beat)
        beat += INTERVAL
        clock.now = beat
    assert set(counts.values()) == {4}
    assert {w.sampling_alone for w in workers} == {None}   # all in the sampler's own thread


def test_a_drive_whose_sample_runs_a_process_is_sampled_in_a_thread_of_its_own(tmp_path, clock):
    slow, fast = make_worker(tmp_path, "slow"), make_worker(tmp_path, "fast")
    release = threading.Event()
    threads: list[str] = []

    def slow_sample() -> bool:
        threads.append(threading.current_thread().name)
        if len(threads) > 1:
            release.wait(5)                           # `btrfs filesystem usage` hanging on a slow device
        return False
    slow.sample = slow_sample  # type: ignore[method-assign]
    fast_samples = []
    fast.sample = lambda: fast_samples.append(1) or True  # type: ignore[method-assign]
    sampler = Sampler(lambda: [slow, fast], lambda: INTERVAL, threading.Event())
    sampler.turn(clock.now)                           # the first fallback is found out inline
    assert threads == [threading.current_thread().name] and not slow.cheap
    assert slow.next_sample == pytest.approx(clock.now + 2.0)  # a process: at most every 2 s
    clock.now += 2.0
    sampler.turn(clock.now)                           # now alone: the sampler does not wait for it
    alone = slow.sampling_alone
    assert alone is not None and alone.is_alive() and threads[-1] == "sample-slow"
    for _ in range(8):
        clock.now += INTERVAL
        sampler.turn(clock.now)                       # the other drive goes on; no second thread for the slow one
    assert len(fast_samples) == 10 and slow.sampling_alone is alone and len(threads) == 2
    release.set()
    alone.join(5)


def test_the_sampler_thread_stops_with_the_daemon(tmp_path):
    worker = make_worker(tmp_path)
    sampled = threading.Event()
    worker.sample = lambda: sampled.set() or True  # type: ignore[method-assign]
    stop = threading.Event()
    sampler = Sampler(lambda: [worker], lambda: 0.01, stop)
    sampler.start()
    assert sampled.wait(5)
    stop.set()
    sampler.join(5)
    assert not sampler.is_alive()
