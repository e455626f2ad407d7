"""A runner that replays command transcripts, at the runner's seam (no subprocess, nothing patched).

Each expected command is a :class:`Reply`, matched by its argv in the order the commands come (per argv: the
same command asked twice gets its replies in turn). A long move is a reply that ``blocks_until`` another command
has been run — from another thread, the way ``pvmove --abort`` ends a ``pvmove`` — and then answers what the
transcript says it answered. A reply's ``then`` is called once the command "ran" (a test's hook: the sampler asking
for a pre-emption while ``lvreduce`` runs). Progress lines are handed to ``on_line`` as the real runner does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from bsud.errors import CommandError
from bsud.runner import Completed, Runner


@dataclass
class Reply:
    argv: tuple[str, ...]
    rc: int = 0
    stdout: str = ""
    stderr: str = ""
    blocks_until: tuple[str, ...] | None = None   # answered only once this command has run and done its work
    then: Callable[[], None] | None = None
    calls: int = 0


@dataclass
class Call:
    argv: tuple[str, ...]
    thread: str
    started: float
    ended: float = 0.0


class TranscriptRunner(Runner):
    def __init__(self, replies: list[Reply], block_timeout: float = 10.0) -> None:
        super().__init__()
        self.replies = replies
        self.block_timeout = block_timeout
        self.calls: list[Call] = []
        self._ran: dict[tuple[str, ...], threading.Event] = {}
        self._lock = threading.Lock()

    def _event(self, argv: tuple[str, ...]) -> threading.Event:
        with self._lock:
            return self._ran.setdefault(argv, threading.Event())

    def ran(self, *argv: str) -> int:
        return sum(1 for c in self.calls if c.argv == tuple(argv))

    def argvs(self) -> list[tuple[str, ...]]:
        return [c.argv for c in self.calls]

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True,
            ok_codes: Iterable[int] = (0,), input_text: str | None = None, quiet: bool = False,
            on_line: Callable[[str], None] | None = None) -> Completed:
        key = tuple(str(a) for a in argv)
        call = Call(key, threading.current_thread().name, time.monotonic())
        with self._lock:
            self.calls.append(call)
            reply = next((r for r in self.replies if r.argv == key and r.calls == 0), None)
            if reply is None:  # asked again: the last reply for it, again
                reply = next((r for r in reversed(self.replies) if r.argv == key), None)
            if reply is None:
                raise AssertionError(f"not in the transcript: {' '.join(key)}")
            reply.calls += 1
        if reply.blocks_until is not None:
            lines = reply.stdout.splitlines()
            if on_line is not None and lines:
                on_line(lines[0])  # the first progress report comes before the move is stopped
            if not self._event(reply.blocks_until).wait(self.block_timeout):
                raise AssertionError(f"{' '.join(key)} was never stopped by {' '.join(reply.blocks_until)}")
            if on_line is not None:
                for line in lines[1:]:
                    on_line(line)
        elif on_line is not None:
            for line in reply.stdout.splitlines():
                on_line(line)
        call.ended = time.monotonic()
        if reply.rc == 0 or "canceled" in reply.stderr.lower():
            self._event(key).set()  # what a blocked move waits for: this command having done its work
        if reply.then is not None:
            reply.then()
        if check and reply.rc not in set(ok_codes):
            raise CommandError(list(key), reply.rc, reply.stdout, reply.stderr)
        return Completed(key, reply.rc, reply.stdout, reply.stderr, call.ended - call.started)
