"""The write-rate meter and the grow clock, fed with made-up samples (no clock, no I/O)."""

from __future__ import annotations

import pytest

from bsud.config import Provider
from bsud.reconcile.pace import DEFAULT_GROW_SECONDS, MIN_GROW_SECONDS, GrowClock, RateMeter, make_pace

MB = 1_000_000


def feed(meter: RateMeter, start: float, seconds: float, rate: float, used: int = 0, step: float = 0.25) -> int:
    t = start
    while t <= start + seconds + 1e-9:
        meter.add(t, int(used + (t - start) * rate))
        t += step
    return int(used + seconds * rate)


def test_steady_writer():
    meter = RateMeter()
    feed(meter, 0, 20, 50 * MB)
    assert meter.rate() == pytest.approx(50 * MB, rel=0.01)
    assert meter.peak() == pytest.approx(50 * MB, rel=0.01)


def test_a_burst_is_seen_within_the_short_window():
    meter = RateMeter()
    used = feed(meter, 0, 30, 0)
    feed(meter, 30, 1.0, 400 * MB, used)
    # one second into a 400 MB/s burst after 30 s idle: the 2 s window already shows ~200 MB/s
    assert meter.rate() >= 190 * MB
    assert meter.rate_over(10) < meter.rate_over(2)


def test_deleting_is_not_a_negative_rate():
    meter = RateMeter()
    feed(meter, 0, 5, -100 * MB, used=10_000 * MB)
    assert meter.rate() == 0.0


def test_peak_remembers_the_last_minute_only():
    meter = RateMeter()
    used = feed(meter, 0, 5, 300 * MB)
    feed(meter, 5, 30, 0, used)
    assert meter.rate() == 0.0
    assert meter.peak() == pytest.approx(300 * MB, rel=0.05)
    feed(meter, 35, 70, 0, used)
    assert meter.peak() == 0.0


def test_samples_out_of_order_are_ignored():
    meter = RateMeter()
    meter.add(10.0, 100)
    meter.add(9.0, 0)
    meter.add(11.0, 200)
    assert meter.rate() == pytest.approx(100.0)


def test_grow_clock_learns_the_slowest_recent_grow():
    clock = GrowClock(DEFAULT_GROW_SECONDS[Provider.OUTSCALE])
    assert clock.seconds == 60.0
    for start, took in ((0, 20.0), (100, 35.0), (200, 25.0)):
        clock.start(start, capacity=1000)
        assert clock.observe(start + took / 2, 1000) is None  # not grown yet
        assert clock.observe(start + took, 3000) == pytest.approx(took)
    assert clock.seconds == pytest.approx(35.0)
    clock.start(300, 3000)
    clock.observe(310, 5000)  # a fast grow does not erase the slow one kept
    assert clock.seconds == pytest.approx(35.0)
    assert not clock.running


def test_grow_clock_never_counts_on_less_than_the_floor():
    clock = GrowClock(5.0)
    clock.start(0, 1)
    clock.observe(0.1, 2)
    assert clock.seconds == MIN_GROW_SECONDS


def test_grow_clock_keeps_the_first_start_of_a_grow():
    clock = GrowClock(5.0)
    clock.start(0, 1)
    clock.start(3, 1)  # a retried CreateVolume: the grow began at the first decision
    assert clock.observe(10, 2) == 10


def test_pace_without_a_meter():
    pace = make_pace(None, GrowClock(30.0), 3.0)
    assert pace.write_rate == 0.0 and pace.grow_seconds == 30.0 and pace.safety_factor == 3.0


# -- what the drive's devices write --------------------------------------------------------------------------------

def test_writeback_meter_counts_each_devices_own_growth():
    from bsud.reconcile.pace import WritebackMeter
    wb = WritebackMeter()
    t, written = 0.0, 0
    while t <= 10:
        wb.add(t, {"loop0": written})
        written += int(0.25 * 200 * MB)
        t += 0.25
    assert wb.rate() == pytest.approx(200 * MB, rel=0.02)
    # a device joins with its own history, another leaves: no jump either way
    wb.add(10.25, {"loop0": written, "loop1": 10**12})
    wb.add(10.5, {"loop1": 10**12})
    assert wb.rate() == pytest.approx(200 * MB, rel=0.05)
    # nothing written for a minute: the devices did not get slower, the highest rate seen is kept
    for i in range(240):
        wb.add(10.75 + i * 0.25, {"loop1": 10**12})
    assert wb.meter.rate() == 0.0 and wb.rate() == pytest.approx(200 * MB, rel=0.05)


def test_the_devices_rate_counts_only_once_writeback_was_saturated_for_a_whole_window():
    from bsud.reconcile.pace import WritebackMeter
    wb = WritebackMeter()
    t, written = 0.0, 0
    while t <= 10:   # a trickle while the page cache is calm: says nothing of what the devices can do
        wb.add(t, {"loop0": written}, saturated=False)
        written += int(0.25 * 5 * MB)
        t += 0.25
    assert wb.rate() == 0.0
    start = t
    while t <= start + 1.5:   # saturated, but not for a whole window yet
        wb.add(t, {"loop0": written}, saturated=True)
        written += int(0.25 * 300 * MB)
        t += 0.25
    assert wb.rate() == 0.0
    while t <= start + 4:
        wb.add(t, {"loop0": written}, saturated=True)
        written += int(0.25 * 300 * MB)
        t += 0.25
    assert wb.rate() == pytest.approx(300 * MB, rel=0.05)


def test_a_gap_in_the_devices_samples_starts_the_saturated_window_again():
    """The sampler reads the devices only when the drive's space moved: across a gap, whether the cache stayed
    saturated is unknown, so a window saturated from end to end starts after it."""
    from bsud.reconcile.pace import WritebackMeter
    wb = WritebackMeter()
    wb.add(0.0, {"loop0": 0}, saturated=True)
    wb.add(5.0, {"loop0": 0}, saturated=True)       # 5 s later (samples skipped): the window starts again here
    t, written = 5.0, 0
    while t <= 6.5:   # saturated since the gap, but not for a whole window yet
        written += int(0.25 * 300 * MB)
        t += 0.25
        wb.add(t, {"loop0": written}, saturated=True)
    assert wb.rate() == 0.0
    while t <= 7.5:
        written += int(0.25 * 300 * MB)
        t += 0.25
        wb.add(t, {"loop0": written}, saturated=True)
    assert wb.rate() == pytest.approx(300 * MB, rel=0.05)


def test_pace_carries_the_writeback_figures_only_when_sampled():
    from bsud.reconcile.pace import WritebackMeter
    clock = GrowClock(5.0)
    assert make_pace(RateMeter(), clock, 3.0).dirty_room is None
    p = make_pace(RateMeter(), clock, 3.0, WritebackMeter(), dirty_room=3 * 1024**3)
    assert p.dirty_room == 3 * 1024**3 and p.writeback_rate == 0.0


def test_the_peak_window_is_the_daemons_rate_peak_seconds():
    # a rate is measured over up to 10 s, and the peak kept for the window: a burst ends counting after both
    meter = RateMeter(peak_window=10.0)
    used = feed(meter, 0, 3, 500 * MB)
    feed(meter, 3, 21, 0, used)
    assert meter.peak() == 0.0
    meter = RateMeter()
    used = feed(meter, 0, 3, 500 * MB)
    feed(meter, 3, 21, 0, used)
    assert meter.peak() > 100 * MB  # the default minute
