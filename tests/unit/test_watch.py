"""A drive thread stuck in a step is told apart from one that is only busy (bsud.watch)."""

from __future__ import annotations

import threading
import time

from bsud.runner import Runner
from bsud.watch import GRACE_SECONDS, StepWatch, operation


def test_a_step_is_overdue_only_past_its_operations_own_bound():
    watch = StepWatch("data", slack=600)
    now = time.monotonic()
    assert watch.overdue(now + 10_000) is None  # not in a step: sleeping between steps is not stuck
    watch.begin()
    watch.push("command lvm pvmove", 3600)
    assert watch.overdue(now + 3000) is None  # a long move, within its bound
    why = watch.overdue(now + 3600 + GRACE_SECONDS + 5)
    assert why is not None and why.startswith("drive 'data': command lvm pvmove has run for ")
    assert why.endswith(f"longer than its {3600 + GRACE_SECONDS:.0f} s bound")
    watch.pop()
    assert watch.overdue(time.monotonic() + 599) is None  # between operations: the step's slack
    assert "shows no progress" in (watch.overdue(time.monotonic() + 601) or "")
    watch.end()
    assert watch.overdue(time.monotonic() + 10_000) is None


def test_the_runner_reports_each_command_to_its_threads_watch():
    watch = StepWatch("data")
    seen: list[str | None] = []

    def step() -> None:
        watch.bind()
        watch.begin()
        runner = Runner()
        runner.run(["sh", "-c", "sleep 0.3"], timeout=5)
        watch.end()

    thread = threading.Thread(target=step)
    thread.start()
    time.sleep(0.15)
    with watch._lock:
        seen = [what for what, _, _ in watch._operations]
    thread.join()
    assert seen == ["command sh -c sleep 0.3"]
    assert watch._operations == [] and watch.overdue(time.monotonic() + 10_000) is None


def test_operations_outside_a_watched_thread_are_free():
    with operation("anything", 0):
        pass
