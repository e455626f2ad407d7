"""kill -9 at every step boundary of scale-up and scale-down, then restart: converges, no data lost, no leak.

The daemon runs through tests.crashpoint, which SIGKILLs it right before or after the first action of that
kind (or cloud call) after it starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .daemon_harness import DaemonHarness, checksums

pytestmark = pytest.mark.host


@pytest.fixture
def harness(workdir: Path):
    h = DaemonHarness(workdir, drive="crashtest")
    yield h
    h.close()


def assert_no_leak(h: DaemonHarness, volumes: int) -> None:
    st = h.status()
    assert len(st["volumes"]) == volumes
    assert len(h.images()) == volumes, h.images()
    assert len(h.loops()) == volumes, h.loops()
    assert all(v["member"] for v in st["volumes"])
    assert not any(v.get("bookkeeping") for v in st["volumes"])


def crash_and_recover(h: DaemonHarness, when: str, action: str) -> None:
    layer = "cloud" if action.islower() else "action"
    h.start(crash=f"{when}:{layer}:{action}")
    assert h.wait_exit(180) == -9, f"daemon did not reach {when} {action}:\n{h.tail()}"
    h.start()


SCALE_UP = [("after", "CreateVolume"), ("after", "AttachVolume"), ("before", "Join"), ("after", "Join")]
# RetireVolume detaches then deletes: "after detach_volume" is the stop between the two.
SCALE_DOWN = [("after", "MarkVolume"), ("before", "RemoveFromDrive"), ("after", "RemoveFromDrive"),
              ("before", "RetireVolume"), ("after", "detach_volume"), ("after", "RetireVolume")]


@pytest.mark.parametrize(("when", "action"), SCALE_UP, ids=[f"{w}-{a}" for w, a in SCALE_UP])
def test_kill_during_scale_up(workdir: Path, when: str, action: str):
    # min-used-space-perc 20: the drive grown (1 + 2 GiB, 880 MiB) stays grown; at 40 % it would then shrink to
    # the 2 GiB volume alone (the right size), which the scale-down matrix covers
    h = DaemonHarness(workdir, drive="crashtest", **{"min-used-space-perc": 20})
    try:
        scale_up_then_crash(h, when, action)
    finally:
        h.close()


def scale_up_then_crash(h: DaemonHarness, when: str, action: str) -> None:
    h.start()
    h.wait_online(volumes=1)
    assert h.stop() == 0
    h.fill("a.bin", 880)  # over 85% while no daemon runs
    sums = checksums(h.mount)
    crash_and_recover(h, when, action)
    h.wait_online(volumes=2)
    assert checksums(h.mount) == sums
    assert_no_leak(h, 2)
    assert h.stop() == 0


@pytest.mark.parametrize(("when", "action"), SCALE_DOWN, ids=[f"{w}-{a}" for w, a in SCALE_DOWN])
def test_kill_during_scale_down(harness: DaemonHarness, when: str, action: str):
    h = harness
    h.start()
    h.wait_online(volumes=1)
    h.fill("a.bin", 880)
    h.wait_online(volumes=2)
    assert h.stop() == 0
    (h.mount / "a.bin").unlink()
    h.fill("b.bin", 100)
    sums = checksums(h.mount)
    crash_and_recover(h, when, action)
    h.wait_for("scale-down to one volume",
               lambda s: s.get("phase") == "online" and s.get("action") == "Idle" and len(s["volumes"]) == 1,
               timeout=180)
    assert checksums(h.mount) == sums
    assert_no_leak(h, 1)
    assert h.stop() == 0
