"""The engine's retry policy with fakes: failures are retried, never counted as "no effect"; a repeat limit
reached backs off and tries again; an episode (Idle/Wait/Blocked between) starts the count anew."""

from __future__ import annotations

import time
from dataclasses import replace as replace_
from pathlib import Path

import pytest

from bsud.cloud.local import LocalCloud
from bsud.config import CloudSettings, DriveConfig, Layout, Provider, Target
from bsud.errors import BsudError
from bsud.reconcile import engine
from bsud.reconcile.engine import REMOVAL_FAILURE_LIMIT, REPEAT_LIMIT, UNCHANGED_LIMIT, DriveReconciler
from bsud.reconcile.model import (REMOVING, DriveObs, Grow, Idle, MarkVolume, Outcome, RemoveFromDrive, Unmount,
                                  UsageObs, VolumeObs)
from bsud.reconcile.observe import CloudSnapshot


class FakeExecutor:
    """Records what it is asked to do; fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.failing = False
        self.outcome = Outcome.CHANGED
        self.done: list[str] = []
        self.created: str | None = None

    def run(self, action, devices=None) -> Outcome:
        if self.failing:
            raise BsudError("the API is down", temporary=True)
        self.done.append(action.kind)
        return self.outcome


class ScriptedDrive(DriveReconciler):
    """A reconciler whose observations are given by the test (no cloud, no host)."""

    next_obs: DriveObs

    def observe(self, max_age=None):
        from dataclasses import replace

        return replace(self.next_obs, removal_held=self._held_removals()), []


MEMBER = VolumeObs(id="v1", size_gib=10, state="in-use", attached_here=True, device="/dev/x", member=True)
GROWABLE = DriveObs(name="d", volumes=(MEMBER,), has_filesystem=True, mounted=True, active=True, can_grow=True)
SETTLED = DriveObs(name="d", volumes=(MEMBER,), has_filesystem=True, mounted=True, active=True)


@pytest.fixture
def drive(tmp_path: Path) -> tuple[ScriptedDrive, FakeExecutor]:
    cloud = LocalCloud(CloudSettings(provider="local", state_dir=str(tmp_path), instance_id="i-x"))
    spec = DriveConfig(name="d", target=Target.ONLINE, mount_path="/mnt/d", layout=Layout.BTRFS)
    rec = ScriptedDrive(spec, cloud, CloudSnapshot(cloud), Provider.LOCAL)
    fake = FakeExecutor()
    rec.executor = fake  # type: ignore[assignment]
    rec.next_obs = GROWABLE
    return rec, fake


def test_failures_are_retried_without_limit(drive):
    rec, fake = drive
    fake.failing = True
    for _ in range(REPEAT_LIMIT * 3):
        with pytest.raises(BsudError, match="API is down"):
            rec.step()
    fake.failing = False
    assert rec.step().action == Grow()
    assert fake.done == ["Grow"]


def test_no_effect_backs_off_then_tries_again(drive):
    rec, fake = drive
    for _ in range(REPEAT_LIMIT):
        rec.step()
    with pytest.raises(BsudError, match="without effect") as info:
        rec.step()
    assert info.value.temporary and rec.status.phase == "blocked"
    rec.step()  # after the daemon's backoff: tried again, not parked
    assert fake.done == ["Grow"] * (REPEAT_LIMIT + 1)


def test_separate_episodes_do_not_add_up(drive):
    rec, fake = drive
    for _ in range(REPEAT_LIMIT * 2):
        rec.next_obs = GROWABLE
        rec.step()
        rec.next_obs = SETTLED
        assert rec.step().action.kind == "Idle"
    assert fake.done == ["Grow"] * (REPEAT_LIMIT * 2)


def test_nothing_to_do_twice_backs_off_sooner(drive):
    rec, fake = drive
    fake.outcome = Outcome.UNCHANGED
    for _ in range(UNCHANGED_LIMIT):
        rec.step()
    assert rec.status.outcome == "unchanged"
    with pytest.raises(BsudError, match="with nothing to do") as info:
        rec.step()
    assert info.value.temporary
    fake.outcome = Outcome.CHANGED
    rec.step()  # tried again after the backoff
    assert fake.done == ["Grow"] * (UNCHANGED_LIMIT + 1) and rec.status.outcome == "changed"


def test_the_executor_tells_what_changed(tmp_path: Path):
    """The real executor on the local provider (files in a temp dir, no device): a mark already set and an
    unmount of what is not mounted report UNCHANGED; setting the mark reports CHANGED."""
    from bsud.host.layouts import make_layout
    from bsud.naming import REMOVING, STATE_TAG
    from bsud.reconcile.execute import Executor
    from bsud.runner import Runner

    cloud = LocalCloud(CloudSettings(provider="local", state_dir=str(tmp_path), instance_id="i-x"))
    spec = DriveConfig(name="d", target=Target.ONLINE, mount_path=str(tmp_path / "mnt"), layout=Layout.BTRFS)
    executor = Executor(spec, cloud, make_layout(Layout.BTRFS, "d", Runner()), Provider.LOCAL)
    vol = cloud.create_volume("d", 1, "gp2")
    mark = MarkVolume(volume_id=vol.id, value=REMOVING)
    assert executor.run(mark) is Outcome.CHANGED
    assert cloud.get_volume(vol.id).tags[STATE_TAG] == REMOVING
    assert executor.run(mark) is Outcome.UNCHANGED
    assert executor.run(Unmount()) is Outcome.UNCHANGED
    with pytest.raises(BsudError, match="not carried out"):
        executor.run(Idle())  # the engine handles Idle, Wait and Blocked; the executor never does


def test_a_reload_applies_the_daemon_section_too(drive):
    from bsud.config import DaemonSettings

    rec, _ = drive
    rec.update_spec(rec.spec, DaemonSettings(volume_wait_seconds=7, device_wait_seconds=9, grow_seconds=4))
    assert (rec.executor.attach_timeout, rec.executor.device_timeout) == (7, 9)
    assert rec.pace().grow_seconds == 4  # nothing timed yet: the configured default


def test_a_removal_failing_again_and_again_is_given_up_for_an_hour_then_tried_again(drive, monkeypatch):
    rec, fake = drive
    clock = [1000.0]
    monkeypatch.setattr(engine.time, "monotonic", lambda: clock[0])
    small = VolumeObs(id="v2", size_gib=10, state="in-use", attached_here=True, device="/dev/y", member=True)
    big = VolumeObs(id="v1", size_gib=30, state="in-use", attached_here=True, device="/dev/x", member=True)
    low = UsageObs(used=2 << 30, free=38 << 30, size=40 << 30)
    removing = DriveObs(name="d", volumes=(replace_(big, bookkeeping=REMOVING), small), has_filesystem=True,
                        mounted=True, active=True, usage=low)
    rec.next_obs = removing

    def run(action, devices=None):
        fake.done.append(action.kind)
        if isinstance(action, RemoveFromDrive):
            raise BsudError("btrfs: unable to relocate a chunk (No space left on device)", temporary=True)
        return Outcome.CHANGED
    fake.run = run  # type: ignore[method-assign]

    for _ in range(REMOVAL_FAILURE_LIMIT):
        with pytest.raises(BsudError, match="relocate"):
            rec.step()
    abandon = rec.step().action  # the volume is left in the drive, saying why and until when
    assert abandon == MarkVolume(volume_id="v1", value="") and "failed 3 times in a row" in abandon.reason
    assert "No space left" in abandon.reason and "not tried again before" in abandon.reason
    rec.next_obs = replace_(removing, volumes=(big, small))  # the mark dropped: used is still low
    settled = rec.step()
    assert settled.action == Idle() and any("not removing v1 for now" in n for n in settled.notes)
    assert fake.done == ["RemoveFromDrive"] * REMOVAL_FAILURE_LIMIT + ["MarkVolume"]
    clock[0] += engine.REMOVAL_HOLD_SECONDS + 1
    assert rec.step().action == MarkVolume(volume_id="v1", value=REMOVING)  # an hour on: tried again


def test_the_last_observation_is_kept_while_steps_fail_to_observe_and_across_a_reload(drive, monkeypatch):
    """What bsud_drive_last_observed_timestamp_seconds shows: set by a step that observed the drive (whatever its
    action then does), left alone by one that could not, and not made new by a reload."""
    rec, fake = drive
    assert rec.status.updated == 0
    rec.next_obs = SETTLED
    before = time.time()
    rec.step()
    seen = rec.status.updated
    assert before <= seen <= time.time()

    def cannot_observe(max_age=None):
        raise BsudError("lsblk timed out", temporary=True)

    monkeypatch.setattr(rec, "observe", cannot_observe)
    for _ in range(3):
        with pytest.raises(BsudError, match="lsblk"):
            rec.step()
    assert rec.status.updated == seen and rec.status.errors == 3
    rec.update_spec(rec.spec)
    assert rec.status.updated == seen and rec.status.errors == 3
