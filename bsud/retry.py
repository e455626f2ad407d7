"""When a failed step is tried again: one table, read by the drive's worker (which sleeps what it is told).

The delay comes from the error's kind (:func:`kind_of`), not from repetition alone:

- **temporary** (``BsudError.temporary``: a wait that timed out, a busy unmount, the API unreachable): tried again
  after ``retry-seconds``, twice as long each time, at most 5 minutes apart; anything that wakes the drive (the
  sampler finding it needs space, a reload, a device event) tries at once.
- **throttled** (the cloud refused the request for its rate: ``RequestLimitExceeded``, HTTP 429 — botocore already
  retried it): its own, longer backoff, from three times ``retry-seconds`` up to 10 minutes; a drive needing space
  does not cut it short (more requests would only prolong the throttling), a reload or a device event does.
- **permanent** (foreign data, a command that refused, a volume in a state waiting cannot leave): waiting does not
  help, a change does — a reload, a block device event concerning the drive, or the drive needing space (a grow
  must never wait on a backoff while the drive fills: a command's refusal may be the passing kind) ends the wait at
  once. Otherwise it is tried again at the next full check (``full-check-seconds``), then twice as long each time,
  at most every 30 minutes: never parked for good, never hammered while nothing changes.
- **internal** (not a ``BsudError``: a bug): like a temporary error, but the sampler's calls do not cut it short.

An error's own ``delay`` (the exports' attempts, spaced by the engine) is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from bsud.errors import BsudError, CloudError


class ErrorKind(Enum):
    TEMPORARY = "temporary"
    THROTTLED = "throttled"
    PERMANENT = "permanent"
    INTERNAL = "internal"


@dataclass(frozen=True)
class Backoff:
    """``scale`` × the setting ``start`` the first time, ``factor`` times longer after each failure in a row, never
    more than ``most`` seconds; ``woken_by_need``: the sampler's call for space ends the wait."""

    start: str            # "retry-seconds" or "full-check-seconds"
    scale: float
    factor: float
    most: float
    woken_by_need: bool


POLICY: dict[ErrorKind, Backoff] = {
    ErrorKind.TEMPORARY: Backoff("retry-seconds", 1, 2, 300.0, woken_by_need=True),
    ErrorKind.THROTTLED: Backoff("retry-seconds", 3, 2, 600.0, woken_by_need=False),
    ErrorKind.PERMANENT: Backoff("full-check-seconds", 1, 2, 1800.0, woken_by_need=True),
    ErrorKind.INTERNAL: Backoff("retry-seconds", 1, 2, 300.0, woken_by_need=False),
}


@dataclass(frozen=True)
class Retry:
    """What the worker does after a failed step: wait ``delay`` seconds (a reload or a device event concerning the
    drive ends the wait; the sampler's call for space too when ``woken_by_need``)."""

    kind: ErrorKind
    delay: float
    woken_by_need: bool


def kind_of(error: BaseException) -> ErrorKind:
    if not isinstance(error, BsudError):
        return ErrorKind.INTERNAL
    if isinstance(error, CloudError) and error.throttled:
        return ErrorKind.THROTTLED
    return ErrorKind.TEMPORARY if error.temporary else ErrorKind.PERMANENT


def backoff_seconds(kind: ErrorKind, attempt: int, retry_seconds: float, full_check_seconds: float = 60.0) -> float:
    """The wait after the ``attempt``-th failure in a row (1 for the first) of this kind."""
    rule = POLICY[kind]
    start = retry_seconds if rule.start == "retry-seconds" else full_check_seconds
    first = min(rule.scale * start, rule.most)
    return min(first * rule.factor ** max(attempt - 1, 0), rule.most)


def retry_after(error: BaseException, attempt: int, retry_seconds: float, full_check_seconds: float) -> Retry:
    """What to do after ``error``, the ``attempt``-th failed step in a row."""
    kind = kind_of(error)
    delay = error.delay if isinstance(error, BsudError) and error.delay is not None else \
        backoff_seconds(kind, attempt, retry_seconds, full_check_seconds)
    return Retry(kind, delay, POLICY[kind].woken_by_need)
