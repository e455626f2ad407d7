"""Sizing a volume for the rate a writer can sustain: the page cache's dirty room, then the devices' writeback
rate — not a first second at memory speed. Pure (the kernel's figures come in the Pace)."""

from __future__ import annotations

import pytest

from bsud.host.writeback import dirty_room_of, parse_vmstat
from bsud.reconcile.model import GIB, Pace, UsageObs
from bsud.reconcile.scaling import scale_decision
from bsud.reconcile.trigger import full_margin, rate_sized
from tests.unit.test_shrink import spec, vol

MB = 1_000_000


def usage(used_gib: float, total_gib: float) -> UsageObs:
    used = int(used_gib * GIB)
    return UsageObs(used=used, free=int(total_gib * GIB) - used, size=int(total_gib * GIB))


def pace(rate: float, grow: float = 5.0, writeback: float = 0.0, room: float | None = None) -> Pace:
    return Pace(write_rate=rate, recent_peak=rate, grow_seconds=grow, safety_factor=3.0, writeback_rate=writeback,
                dirty_room=None if room is None else int(room * GIB))


RATE_TABLE = [
    # id, pace, usage, expected GiB
    # not sampled (no kernel figures): rate × grow time × (safety factor + 1) — issue 21's 36 GiB for 1278 MB/s
    # was 6 grow times
    ("unknown-kernel-figures", pace(1278 * MB), usage(0.1, 1), 24),
    # a writer slower than the devices: its own rate is the bound
    ("slow-writer-its-rate", pace(50 * MB, writeback=200 * MB, room=3.4), usage(0.1, 1), 1),
    # issue 21's burst: 1278 MB/s for a second into the page cache (3.4 GiB of room), devices seen at 300 MB/s:
    # the cache's room plus 20 s of writeback (9.0 GiB), not 20 s at memory speed — but at least two grows at
    # the present rate less the free space (12 GiB), in case the devices are faster than seen
    ("memory-speed-burst", pace(1278 * MB, writeback=300 * MB, room=3.4), usage(0.1, 1), 12),
    # the devices not seen saturated yet: a third of the present rate assumed (3.4 GiB + 426 MB/s × 20 s)
    ("devices-not-seen-yet", pace(1278 * MB, writeback=0.0, room=3.4), usage(0.1, 1), 12),
    # devices seen slower than the floor: two grows at the present rate, less what is free
    ("slow-devices-floor", pace(1278 * MB, writeback=50 * MB, room=3.4), usage(0.1, 1), 12),
    # a grow timed at 2 s: everything scales with it
    ("fast-grows", pace(1278 * MB, grow=2.0, writeback=300 * MB, room=3.4), usage(0.1, 1), 6),
    ("fast-grows-big-free-space", pace(1278 * MB, grow=2.0, writeback=300 * MB, room=3.4), usage(1, 8), 6),
    # devices faster than the writer: the writer's rate
    ("fast-devices", pace(400 * MB, grow=2.0, writeback=2000 * MB, room=3.4), usage(0.1, 1), 3),
]


@pytest.mark.parametrize(("p", "u", "gib"), [r[1:] for r in RATE_TABLE], ids=[r[0] for r in RATE_TABLE])
def test_rate_sized(p, u, gib):
    assert rate_sized(p, u).gib == gib


def test_the_reason_says_what_the_drive_can_take():
    s = spec(initial_size_gib=1)
    decision = scale_decision(s, [vol("a", 1, None)], usage(0.1, 1), 14901,
                               pace(1278 * MB, writeback=300 * MB, room=3.4))
    action = decision.action
    assert action is not None and action.size_gib == 12
    assert "but the drive takes at most 9.0 GiB in that time (3.4 GiB more in the page cache, then 300.0 MB/s " \
        "written back to its devices); at least 2 grows at 1278.0 MB/s less the 0.8 GiB free" in action.reason


def test_the_trigger_leaves_a_grow_time_whatever_the_devices_do():
    """With the devices' rate not measured (a third of the present rate assumed), the trigger still fires while the
    writer needs at least one grow time to fill the drive: held to the devices' pace past the cache when they are
    slower, at its own rate when they are faster."""
    from bsud.reconcile.trigger import scale_up_reason
    s = spec(initial_size_gib=1)
    for rate in (100 * MB, 400 * MB, 1300 * MB):
        for room in (0.3, 3.4):
            for grow in (2.0, 5.0, 30.0):
                p = pace(rate, grow, 0.0, room)
                for free_gib in [x / 4 for x in range(1, 400)]:
                    u = usage(1.0, 1.0 + free_gib)
                    if scale_up_reason(s, u, p) is not None:
                        continue
                    left = u.free - full_margin(u)
                    for devices in (50 * MB, rate / 2, rate, 4 * rate):
                        # the fastest a writer of this rate fills it: its rate until the cache is full, then the
                        # devices' (or its own, if they are faster)
                        held = min(rate, devices)
                        cache = room * GIB
                        true = left / rate if left <= cache else cache / rate + (left - cache) / held
                        assert true >= grow, (rate, room, grow, free_gib, devices)


def test_never_smaller_than_what_keeps_the_next_grow_safe():
    """Whatever the devices really do (faster than seen, or not seen at all), a writer that keeps its rate — or is
    held to the devices' once the cache is full — does not fill the drive before a second grow, started the moment
    the first is done, is usable: free + volume ≥ what it writes in two grow times."""
    for rate in (25 * MB, 200 * MB, 800 * MB, 1300 * MB, 3000 * MB):
        for true_devices in (50 * MB, 300 * MB, 1000 * MB, 3000 * MB):
            for seen in (0.0, true_devices / 4, true_devices):
                for room in (0.5, 3.4, 12.0):
                    for grow in (2.0, 5.0, 30.0):
                        for used, total in ((0.1, 1), (0.5, 2), (3, 10)):
                            u, p = usage(used, total), pace(rate, grow, seen, room)
                            size = rate_sized(p, u).gib * GIB
                            free = u.free - full_margin(u)
                            first = min(rate * grow, room * GIB + true_devices * grow)
                            if first > free:
                                continue  # the first grow itself is too slow for this drive: no sizing helps
                            written = min(rate * 2 * grow, room * GIB + true_devices * 2 * grow)
                            assert free + size >= written, (rate, true_devices, seen, room, grow, used, total)


def test_the_page_caches_room_from_vmstat():
    vmstat = parse_vmstat("nr_dirty 538\nnr_writeback 12\nnr_dirty_threshold 944259\n"
                          "nr_dirty_background_threshold 471553\n")
    assert dirty_room_of(vmstat, 4096) == (944259 - 538 - 12) * 4096
    assert dirty_room_of({"nr_dirty": 1}, 4096) is None
    # over the limit (writers held): no room, never negative
    assert dirty_room_of({"nr_dirty_threshold": 10, "nr_dirty": 9, "nr_writeback": 5}, 4096) == 0


def test_the_trigger_counts_a_memory_speed_rate_only_up_to_the_page_caches_room():
    s = spec(initial_size_gib=1)
    u = usage(1.0, 13)   # 1 + 12 GiB, the 12 just added for a burst at 1278 MB/s
    # the present rate alone: full in ~9.5 s < 3 × 5 s — the next grow at once, and the next…
    from bsud.reconcile.trigger import scale_up_reason, time_to_full
    assert scale_up_reason(s, u, pace(1278 * MB)) is not None
    # 3.4 GiB more in the page cache, then 300 MB/s: ~28 s
    p = pace(1278 * MB, writeback=300 * MB, room=3.4)
    assert time_to_full(u, p) == pytest.approx((u.free - full_margin(u) - 3.4 * GIB) / (300 * MB))
    assert scale_up_reason(s, u, p) is None
    # the devices never seen saturated: a third of the present rate assumed after the cache's room
    unseen = pace(1278 * MB, writeback=0.0, room=3.4)
    assert time_to_full(u, unseen) == pytest.approx((u.free - full_margin(u) - 3.4 * GIB) / (426 * MB))
    # a drive with less free space than the cache's room fills at the present rate
    small = usage(0.5, 1)
    assert time_to_full(small, p) == pytest.approx((small.free - full_margin(small)) / (1278 * MB))
    reason = scale_up_reason(s, usage(7.0, 13), p)
    assert reason is not None and "1278.0 MB/s now; at most 3.4 GiB more in the page cache, then 300.0 MB/s" in reason
