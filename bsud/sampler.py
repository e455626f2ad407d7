"""The daemon's one sampler: every drive's live space, every ``usage-interval-seconds``, from one thread.

A thread per drive woke four times a second each: ten idle drives cost 40 thread wake-ups a second besides the
samples. One thread takes every drive's sample in turn (:meth:`bsud.worker.DriveWorker.sample`: a few ``pread``
when nothing moved, the full read and the planner's trigger when something did), on a fixed beat.

A sample never waits on another drive's: a drive whose last sample ran a process (sysfs could not say, and
``btrfs filesystem usage`` answered instead) is sampled in a thread of its own, at most every 2 s, until sysfs
answers again — so a slow or hung command holds up that drive alone (and its silence stops systemd's watchdog, as a
stuck step does: :meth:`~bsud.worker.DriveWorker.overdue`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bsud.worker import DriveWorker


class Sampler(threading.Thread):
    """Samples ``workers()`` every ``interval()`` seconds until ``stop`` is set (both read anew on each beat: a
    reload applies at once)."""

    def __init__(self, workers: Callable[[], list[DriveWorker]], interval: Callable[[], float],
                 stop: threading.Event) -> None:
        super().__init__(name="sampler", daemon=True)
        self.workers = workers
        self.interval = interval
        self.stop = stop

    def run(self) -> None:
        beat = time.monotonic()
        while not self.stop.is_set():
            self.turn(beat)
            # A fixed beat (not interval + the time sampling took); one that fell behind starts again from now.
            beat = max(beat + self.interval(), time.monotonic())
            self.stop.wait(beat - time.monotonic())

    def turn(self, now: float) -> None:
        """Sample each drive due at ``now``, the beat's time (a drive sampled on one beat is due on the next)."""
        interval = self.interval()
        for worker in self.workers():
            if worker.stop_event.is_set() or worker.next_sample > now:
                continue
            alone = worker.sampling_alone
            if alone is not None and alone.is_alive():
                continue  # its last sample (a process) still runs
            if worker.cheap:
                worker.sample_once(now, interval)
                continue
            alone = threading.Thread(target=worker.sample_once, args=(now, interval), daemon=True,
                                     name=f"sample-{worker.reconciler.spec.name}")
            worker.sampling_alone = alone
            alone.start()
