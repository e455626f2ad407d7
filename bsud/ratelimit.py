"""A token bucket shared by every thread that talks to the cloud API.

Drives reconcile concurrently; this keeps their combined call rate under the
account's limit, where the original bsud slept a fixed 3 s between any two calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Allow ``rate`` calls per second on average, bursts of up to ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._lock = threading.Lock()
        self.waited = 0.0

    def _reserve(self) -> float:
        """Take one token (possibly going negative); return how long the caller must wait."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self) -> float:
        delay = self._reserve()
        if delay > 0:
            self.waited += delay
            self._sleep(delay)
        return delay
