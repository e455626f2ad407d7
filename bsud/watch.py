"""Whether a drive's thread is stuck, for systemd's watchdog.

The daemon's main loop pings the watchdog; on its own that says only that the main loop runs. A drive's thread can
hang in a step — a command in uninterruptible sleep on a frozen or suspended device, which no timeout can kill —
while the main loop goes on, and then the drive never grows again. So each drive's thread holds a
:class:`StepWatch`: a step says when it starts and ends, and each blocking operation in it (a command, through
:func:`operation`, which the runner uses) says how long it may take. Past that, the drive is *overdue* and the
daemon stops pinging the watchdog: systemd restarts bsud, whose start-up recovery (a suspended device resumed…)
lets the drive go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: Between two operations a step runs Python code and cloud API calls (each bounded by its timeouts and retries):
#: a step that shows no progress for this long, outside any operation, is stuck.
STEP_SLACK_SECONDS = 900.0
#: What a command may take beyond its own timeout: killing it and collecting its exit.
GRACE_SECONDS = 10.0

_local = threading.local()


class StepWatch:
    """One drive thread's progress: whether it is in a step, and until when its current operation may run."""

    def __init__(self, name: str, slack: float = STEP_SLACK_SECONDS) -> None:
        self.name = name
        self.slack = slack
        self._lock = threading.Lock()
        self._in_step = False
        self._since = 0.0
        self._operations: list[tuple[str, float, float]] = []  # (what, started, must end by)

    def bind(self) -> None:
        """Make this the watch of the calling thread (operations run in it report here)."""
        _local.watch = self

    def begin(self) -> None:
        with self._lock:
            self._in_step, self._since, self._operations = True, time.monotonic(), []

    def end(self) -> None:
        with self._lock:
            self._in_step, self._operations = False, []

    def push(self, what: str, seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._operations.append((what, now, now + seconds + GRACE_SECONDS))

    def pop(self) -> None:
        with self._lock:
            if self._operations:
                self._operations.pop()
            self._since = time.monotonic()

    def overdue(self, now: float | None = None) -> str | None:
        """Why the thread is stuck (what it is doing, for how long, against what bound), or None."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self._in_step:
                return None
            if self._operations:
                what, started, deadline = self._operations[-1]
                if now > deadline:
                    return (f"drive {self.name!r}: {what} has run for {now - started:.0f} s, longer than its "
                            f"{deadline - started:.0f} s bound")
                return None
            if now - self._since > self.slack:
                return f"drive {self.name!r}: its step shows no progress for {now - self._since:.0f} s"
            return None


@contextmanager
def operation(what: str, seconds: float) -> Iterator[None]:
    """A blocking operation of the calling thread's step that may take up to ``seconds`` (nothing happens in a
    thread without a watch: the CLI, tests)."""
    watch: StepWatch | None = getattr(_local, "watch", None)
    if watch is None:
        yield
        return
    watch.push(what, seconds)
    try:
        yield
    finally:
        watch.pop()
