"""How fast a drive fills and how long it takes to grow it: a write-rate meter and a grow clock.

Both are plain in-memory bookkeeping fed with times and byte counts (no I/O, no clock of their
own), so they are tested with made-up samples. They are hints for the planner, not state: a
restarted daemon starts with an empty meter and the provider's default grow time.
"""

from __future__ import annotations

from collections import deque

from bsud.config import Provider
from bsud.reconcile.model import Pace

#: Decision → new capacity usable, until the drive has grown once: create + attach + device + join.
DEFAULT_GROW_SECONDS = {
    Provider.LOCAL: 5.0,
    Provider.AWS: 30.0,
    Provider.OUTSCALE: 60.0,
    Provider.EC2: 60.0,
}
#: Windows of the write rate: a short one sees a burst at once, a longer one smooths it.
FAST_WINDOW, STEADY_WINDOW, PEAK_WINDOW = 2.0, 10.0, 60.0
#: Grows remembered; the slowest of them is the estimate (a slow grow is the one that fills a drive).
GROWS_KEPT = 3
#: A grow is never counted on to take less: sampling, a step's observation and a btrfs transaction under
#: heavy writeback take about that much even where the cloud answers at once (the local provider).
MIN_GROW_SECONDS = 2.0


class RateMeter:
    """Write rate from ``(time, used bytes)`` samples: bytes per second over a trailing window."""

    def __init__(self, peak_window: float = PEAK_WINDOW) -> None:
        self.peak_window = peak_window
        self.horizon = max(peak_window, STEADY_WINDOW) + STEADY_WINDOW
        self.samples: deque[tuple[float, int]] = deque()
        self.rates: deque[tuple[float, float]] = deque()   # (time, rate now) for the recent peak

    def add(self, when: float, used: int) -> None:
        if self.samples and when <= self.samples[-1][0]:
            return
        self.samples.append((when, used))
        while self.samples and self.samples[0][0] < when - self.horizon:
            self.samples.popleft()
        self.rates.append((when, self.rate()))
        while self.rates and self.rates[0][0] < when - self.peak_window:
            self.rates.popleft()

    def clear(self) -> None:
        self.samples.clear()
        self.rates.clear()

    def rate_over(self, window: float) -> float:
        """Bytes/s between the newest sample and the oldest one within ``window`` (0 when shrinking)."""
        if len(self.samples) < 2:
            return 0.0
        end_t, end_used = self.samples[-1]
        start_t, start_used = end_t, end_used
        for t, used in reversed(self.samples):
            if t < end_t - window:
                break
            start_t, start_used = t, used
        if end_t - start_t <= 0:
            return 0.0
        return max(0.0, (end_used - start_used) / (end_t - start_t))

    def rate(self) -> float:
        """The present rate: the higher of the short and the steady window (a burst is seen at once)."""
        return max(self.rate_over(FAST_WINDOW), self.rate_over(STEADY_WINDOW))

    def peak(self) -> float:
        return max((r for _, r in self.rates), default=0.0)


class WritebackMeter:
    """What the drive's devices can write: their rate measured while writeback was saturated, the highest seen.

    Fed with ``{device: bytes written}`` (a device joining or leaving is no jump: only each device's own growth
    counts) and whether the page cache is over its background threshold (the kernel's flusher then writes back
    flat out, so what the devices write is what they can). Only a rate over a window saturated from end to end
    counts: a trickle while the cache is calm says nothing of the devices. The highest seen is kept for the
    daemon's life — devices do not get slower because nothing is written. 0 until measured.
    """

    def __init__(self) -> None:
        self.meter = RateMeter()
        self.last: dict[str, int] = {}
        self.total = 0
        self.highest = 0.0
        self.saturated_since: float | None = None

    def add(self, when: float, counters: dict[str, int], saturated: bool = True) -> None:
        if self.meter.samples and when - self.meter.samples[-1][0] > FAST_WINDOW:
            # The sampler reads the devices only when the drive's space moved: after a gap, whether the cache stayed
            # saturated in between is unknown, so the saturated window starts again.
            self.saturated_since = None
        for device, value in counters.items():
            before = self.last.get(device)
            if before is not None and value >= before:
                self.total += value - before
        self.last = dict(counters)
        self.meter.add(when, self.total)
        if not saturated:
            self.saturated_since = None
            return
        if self.saturated_since is None:
            self.saturated_since = when
        if when - self.saturated_since >= FAST_WINDOW:
            self.highest = max(self.highest, self.meter.rate_over(FAST_WINDOW))

    def rate(self) -> float:
        return self.highest


class GrowClock:
    """Times this drive's grows: from the decision to add a volume to the capacity being usable."""

    def __init__(self, default_seconds: float) -> None:
        self.default_seconds = default_seconds
        self.grows: deque[float] = deque(maxlen=GROWS_KEPT)
        self._started: tuple[float, int] | None = None

    @property
    def seconds(self) -> float:
        return max(MIN_GROW_SECONDS, max(self.grows)) if self.grows else self.default_seconds

    @property
    def running(self) -> bool:
        return self._started is not None

    def start(self, when: float, capacity: int) -> None:
        if self._started is None:
            self._started = (when, capacity)

    def observe(self, when: float, capacity: int | None) -> float | None:
        """Feed the capacity seen now; returns the grow's duration once the capacity has risen."""
        if self._started is None or capacity is None:
            return None
        started, before = self._started
        if capacity <= before:
            return None
        self._started = None
        took = when - started
        self.grows.append(took)
        return took


def make_pace(meter: RateMeter | None, clock: GrowClock, safety_factor: float,
              writeback: WritebackMeter | None = None, dirty_room: int | None = None) -> Pace:
    return Pace(write_rate=meter.rate() if meter else 0.0, recent_peak=meter.peak() if meter else 0.0,
                grow_seconds=clock.seconds, safety_factor=safety_factor,
                writeback_rate=writeback.rate() if writeback else 0.0,
                dirty_room=dirty_room if writeback is not None else None)
