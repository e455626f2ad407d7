"""The shared API rate limit, on a fake clock."""

from __future__ import annotations

from bsud.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_burst_then_steady_rate():
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        limiter.acquire()
    assert clock.slept == []
    for _ in range(4):
        limiter.acquire()
    assert clock.slept == [0.5, 0.5, 0.5, 0.5]
    assert clock.now == 2.0


def test_idle_time_refills_up_to_burst_only():
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock, sleep=clock.sleep)
    clock.now = 100.0
    limiter.acquire()
    limiter.acquire()
    limiter.acquire()
    assert clock.slept == [1.0]
