"""A burst pre-empts a removal: the long moves of a removal, stoppable from another thread.

Moving a volume's data off (``pvmove``, ``btrfs device remove``, a shrinking ``btrfs filesystem resize``, the
``btrfs balance`` that packs chunks before it) takes hours on a big volume, and while it runs the drive's step
thread can start nothing else: no grow. The drive's sampler thread sees the drive needing space several times a
second; it calls :meth:`Preemption.request`, which stops the move under way the way the tools allow:

- ``lvm pvmove --abort <PV>``: segments already mirrored stay on their new PV, the segment being copied stays on
  the old one; no pvmove LV is left, the LV is whole and consistent (non-atomic pvmove, bsud never uses
  ``--atomic``);
- ``btrfs device remove cancel`` / ``btrfs filesystem resize cancel`` (kernel 5.14+), ``btrfs balance cancel``: the
  kernel stops relocating at its next check (within the extent being moved), the chunks already relocated stay
  where they went, the device gets its full size back and takes new chunks again.

The stop runs in a thread of its own (the sampler never waits on a command); the step thread's command then ends,
with an error or not, and the move raises :class:`Preempted`: the step ends, the drive is observed and planned at
once (a removal gives way to growth). A request between two moves of one removal (``lvreduce`` running, say) keeps
the next move from starting.

While a move runs, :attr:`Preemption.leaving` is the capacity it is taking away (a device being removed is out of
btrfs's allocation from the first second; a shrink lowers the size at once): the sampler counts the drive's space
without it, so the trigger sees what a writer sees.

A btrfs relocation shows in the space the sampler reads as if it were a writer: the chunk being relocated is made
read-only (its free part counted as taken) and its extents are counted twice, old and new, until the chunk is gone —
up to one chunk's length, appearing at the relocation's speed and vanishing when the chunk is done. So a btrfs move
carries an ``allowance`` (its data chunk size and a margin): :meth:`Preemption.sampled` stops the removal only once
the drive's used bytes rose more than that above where they were when the removal started (measured: a full 1 GiB
chunk relocated on loop devices showed as 1 GiB + 64 KiB more, at "1388 MB/s", within 0.75 s) — growth the
relocation cannot explain: a writer; or once the free bytes fell under a floor: a writer that btrfs already makes
wait for space, which the used bytes cannot show (measured: with 2.1 GB of room left on the other volume, a chunk in
flight and a waiting writer kept the used bytes under the allowance while the free ones fell to 64 MiB) (the allowance holds while the relocation runs and for the rate's window after: the pvmove that
follows a shrink is not stopped for the shrink's echo). A pvmove, invisible to btrfs's accounting, has none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bsud.errors import BsudError, CommandError
from bsud.logs import get_logger

log = get_logger("bsud.host.preempt")

#: A stop that did not take (asked before the move's command got going, or refused) is asked again this often while
#: the move runs…
STOP_RETRY_SECONDS = 2.0
#: …this many times at most (a kernel that cannot cancel a relocation is not asked every 2 s for hours).
STOP_TRIES = 10
#: Free bytes under which a removal is stopped whatever explains the used ones: near there btrfs makes writers wait
#: for space (they stall for the rest of the removal, no ENOSPC). Only where the chunk in flight cannot bring the
#: free bytes that low by itself (the room the staying volumes had when the removal started, less the allowance,
#: is at least the floor): a drive that keeps less room than that (a removal down to one small volume) saw its own
#: relocation stopped at every attempt, for ever (the host lane's lifecycle: 100 MiB moving onto 1 GiB). There a
#: writer is seen once the used bytes outgrow the allowance; the data such a removal moves is small (the planner
#: keeps used at or under the middle of min and max: under 1.6 GiB of room, at most ~2.7 GiB with the defaults).
RELOCATION_FLOOR = 512 * 1024**2
#: How long after a btrfs relocation its allowance still holds: the write rate is measured over the last 10 s
#: (bsud.reconcile.pace's steady window), which may still span it.
RELOCATION_ECHO_SECONDS = 10.0


class Preempted(BsudError):
    """A removal's move was stopped because the drive needs space: not a failure; the drive is planned again at
    once."""

    temporary = True

    def __init__(self, message: str, waited: float | None = None) -> None:
        super().__init__(message, delay=0.0)
        #: Seconds from the request to the move's end (its command's exit).
        self.waited = waited


@dataclass
class _Move:
    what: str
    stop: Callable[[], None]
    leaving: int
    started: float
    ended: threading.Event
    allowance: int = 0          # used bytes the move itself may add (a btrfs relocation's chunk in flight)


class Preemption:
    """One drive's removal, as the sampler can stop it. Thread-safe: the step thread runs moves in :meth:`span`
    and :meth:`move`, the sampler calls :meth:`request`."""

    def __init__(self, drive: str) -> None:
        self.drive = drive
        self._lock = threading.Lock()
        self._depth = 0                                   # spans open (a removal's steps; nested: the grow in it)
        self._requested: tuple[float, str] | None = None  # when (monotonic) and why, within the current span
        self._move: _Move | None = None
        self._stopper: threading.Thread | None = None
        #: The used bytes the sampler saw last (before a removal starts: its baseline).
        self._last_used: int | None = None
        # Within the current span: the baseline (the used bytes when it started, lowered by any lower sample since),
        # and the relocation allowance in force (a btrfs move's, while it runs and for RELOCATION_ECHO_SECONDS after:
        # the write rate looks that far back).
        self._base: int | None = None
        self._allowance = 0
        self._allowance_until = 0.0
        #: The most room the staying capacity had, seen while a move ran (free bytes plus the rise of the used ones):
        #: what the chunk in flight and writers share.
        self._room = 0

    @property
    def leaving(self) -> int:
        """Bytes of the filesystem's capacity the move under way takes away (0 when none)."""
        move = self._move
        return move.leaving if move is not None else 0

    @property
    def requested(self) -> str | None:
        """Why the removal under way is to stop (None: it goes on)."""
        with self._lock:
            return self._requested[1] if self._requested else None

    @contextmanager
    def span(self) -> Iterator[None]:
        """The steps of one removal: a request made anywhere in it stops the move running then, or keeps the next
        one from starting."""
        with self._lock:
            if self._depth == 0:
                self._requested, self._base, self._allowance, self._allowance_until = None, self._last_used, 0, 0.0
                self._room = 0
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._requested = None

    def sampled(self, used: int, free: int, why: str | None) -> bool:
        """The sampler's view: ``used`` and ``free`` bytes now (free without what the move takes away), and why the
        drive needs space (None: it does not). Stops the removal under way when the drive needs space — for a btrfs
        relocation, once the used bytes rose beyond what the relocation itself can add, or the free bytes fell under
        :data:`RELOCATION_FLOOR` (see the module's docstring). True when this call asked for the stop."""
        with self._lock:
            self._last_used = used
            if self._depth == 0:
                return False
            self._base = used if self._base is None else min(self._base, used)
            move = self._move
            in_flight = move.allowance if move is not None else 0
            allowance = in_flight or (self._allowance if time.monotonic() < self._allowance_until else 0)
            rise = used - self._base
            if move is not None:
                self._room = max(self._room, free + rise)
            # The floor tells a waiting writer except where a relocation runs now whose chunk in flight can take the
            # free bytes that low by itself: on a drive left with less room than that, a relocation would stop itself
            # for ever. A relocation's echo (the pvmove after a shrink) is no such case: its chunk is gone, and a
            # shrunk drive has little room — the VM lane's writer met ENOSPC while the echo held the stop back.
            floor_tells = not in_flight or self._room - in_flight >= RELOCATION_FLOOR
            if why is None or (rise <= allowance and (free >= RELOCATION_FLOOR or not floor_tells)):
                return False  # nothing needed, or the relocation in flight may be all of it
        return self.request(why)

    def request(self, why: str) -> bool:
        """The drive needs space (``why``): stop the removal under way, if any. True when this call asked for the
        stop (once per removal); cheap otherwise — the sampler calls it on every sample that needs space."""
        with self._lock:
            if self._depth == 0 or self._requested is not None:
                return False
            self._requested = (time.monotonic(), why)
            move = self._move
        if move is None:
            log.warning("removal pre-empted: the drive needs space; no move of it runs now, none will start",
                        drive=self.drive, reason=why)
            return True
        log.warning("removal pre-empted: the drive needs space; stopping the move", drive=self.drive,
                    move=move.what, running_seconds=round(time.monotonic() - move.started, 1), reason=why)
        self._stopper = threading.Thread(target=self._stop, args=(move,), name=f"preempt-{self.drive}", daemon=True)
        self._stopper.start()
        return True

    def _stop(self, move: _Move) -> None:
        """Ask the move to stop until it ends: a stop asked in the instant its command starts (before the pvmove LV
        or the kernel's exclusive operation exists) finds nothing to stop and is asked again."""
        error = ""
        for _ in range(STOP_TRIES):
            try:
                move.stop()
            except BsudError as exc:
                error = str(exc)
            except Exception:  # noqa: BLE001 - a thread of its own: say it, never lose it
                log.exception("stopping the move failed", drive=self.drive, move=move.what)
                return
            if move.ended.wait(STOP_RETRY_SECONDS):
                return
        log.warning("the move does not stop; the drive grows once it ends", drive=self.drive, move=move.what,
                    tries=STOP_TRIES, error=error)

    def _preempted(self, what: str, started: bool) -> Preempted:
        with self._lock:
            when, why = self._requested or (time.monotonic(), "")
        waited = time.monotonic() - when
        if started:
            log.warning("removal pre-empted: move stopped", drive=self.drive, move=what, waited=round(waited, 2),
                        reason=why)
            return Preempted(f"{what} stopped {waited:.1f} s after the drive needed space ({why})", waited)
        log.info("removal pre-empted: move not started", drive=self.drive, move=what, reason=why)
        return Preempted(f"{what} not started: the drive needs space ({why})", waited)

    @contextmanager
    def move(self, what: str, stop: Callable[[], None], leaving: int = 0, allowance: int = 0) -> Iterator[None]:
        """Run a long move of a removal (the body runs its command) that :meth:`request` may stop with ``stop``;
        ``leaving``: the capacity it takes away while it runs; ``allowance``: the used bytes it may add itself.

        Raises :class:`Preempted` — before starting when the removal is already pre-empted, and after the body when
        it was pre-empted meanwhile (whether the command then failed or ended well: a move that completed just as
        it was stopped is observed as such at the next step)."""
        current = _Move(what, stop, max(0, int(leaving)), time.monotonic(), threading.Event(), max(0, allowance))
        with self.span():
            with self._lock:
                pre_empted = self._requested is not None
                if not pre_empted:
                    self._move = current
                    if current.allowance:
                        self._allowance = max(self._allowance, current.allowance)
            if pre_empted:
                raise self._preempted(what, started=False)
            try:
                yield
            except CommandError as exc:
                if self.requested is None:
                    raise
                raise self._preempted(what, started=True) from exc
            finally:
                with self._lock:
                    self._move = None
                    if current.allowance:
                        self._allowance_until = time.monotonic() + RELOCATION_ECHO_SECONDS
                current.ended.set()
            if self.requested is not None:
                raise self._preempted(what, started=True)

    def join_stopper(self, timeout: float | None = None) -> None:
        """Wait for the last stop's thread (tests)."""
        stopper = self._stopper
        if stopper is not None:
            stopper.join(timeout)
