"""The engine's retry policy with fakes: failures are retried, never counted as "no effect"; a repeat limit
reached backs off and tries again; an episode (Idle/Wait/Blocked between) starts the count anew."""

from __future__ import annotations

import time
from dataclasses import replace as replace_
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from bsud.cloud.local import LocalCloud
from bsud.config import CloudSettings, DriveConfig, Layout, Provider, Target
from bsud.errors import BsudError
from bsud.metrics import Metrics
from bsud.reconcile import engine
from bsud.reconcile.engine import REMOVAL_FAILURE_LIMIT, REPEAT_LIMIT, UNCHANGED_LIMIT, DriveReconciler
from bsud.reconcile.execute import ActionError
from bsud.reconcile.model import (REMOVING, ApplyExports, DriveObs, ExportsObs, Grow, Idle, MarkVolume, Outcome,
                                  Pace, RemoveFromDrive, Unmount, UsageObs, VolumeObs)
from bsud.reconcile.observe import CloudSnapshot
from bsud.sinks import DaemonReport
from bsud.storage import LayoutState


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
GROWABLE = DriveObs(name="d", volumes=(MEMBER,), storage=LayoutState(has_filesystem=True), mounted=True, active=True,
                    can_grow=True)
SETTLED = DriveObs(name="d", volumes=(MEMBER,), storage=LayoutState(has_filesystem=True), mounted=True, active=True)


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
    removing = DriveObs(name="d", volumes=(replace_(big, bookkeeping=REMOVING), small),
                        storage=LayoutState(has_filesystem=True),
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


def test_a_preempted_removal_is_no_failure_and_gives_way_to_growth(drive):
    """issue 21: bursts pre-empting a removal again and again never hold it back as failing (no error, no failed
    event); the step after a pre-emption, the burst still on, abandons it (the removal gives way to growth)."""
    rec, fake = drive
    small = VolumeObs(id="v1", size_gib=4, state="in-use", attached_here=True, device="/dev/x", member=True)
    big = VolumeObs(id="v2", size_gib=10, state="in-use", attached_here=True, device="/dev/y", member=True,
                    bookkeeping=REMOVING)
    low = UsageObs(used=3 << 30, free=11 << 30, size=14 << 30)
    quiet = DriveObs(name="d", volumes=(small, big), storage=LayoutState(has_filesystem=True), mounted=True,
                     active=True, usage=low)
    fake.outcome = Outcome.PREEMPTED
    rec.next_obs = quiet
    for _ in range(max(REMOVAL_FAILURE_LIMIT, REPEAT_LIMIT) + 1):  # bursts come and go: the removal starts again
        action = rec.step().action
        assert isinstance(action, RemoveFromDrive) and action.volume_id == "v2"
        assert rec.status.outcome == "preempted"
    assert rec.status.errors == 0 and rec.status.last_error is None and rec._held_removals() == ()
    fake.outcome = Outcome.CHANGED
    rec.next_obs = replace_(quiet, pace=Pace(write_rate=250e6, grow_seconds=5))  # the burst's pace
    abandon = rec.step().action
    assert abandon == MarkVolume(volume_id="v2", value="") and "needs space" in abandon.reason


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


# -- an export that keeps failing: the drive stays online, the attempts are spaced out, said once as an event -----

NQN = "nqn.2026-11.test.bsud:d"
BUSY = (f"NVMe-oF export of drive 'd': {NQN}: port 127.0.0.1:4421 is in use by another program (listening on "
        "127.0.0.1:4421); free it or choose another address or port")
EXPORTS_OUT = ExportsObs(wanted=2, in_sync=False, present=True, detail=f"{NQN}: missing")


@pytest.fixture
def exporting(tmp_path: Path, monkeypatch):
    """A drive with an NFS and an NVMe/TCP export whose NVMe one cannot be applied; a fake clock; its events."""
    cloud = LocalCloud(CloudSettings(provider="local", state_dir=str(tmp_path), instance_id="i-x"))
    spec = DriveConfig.model_validate({
        "name": "d", "target": "online", "mount-path": "/mnt/d", "layout": "btrfs",
        "exports": [{"kind": "nfs", "clients": ["10.0.0.0/24"]},
                    {"kind": "nvmeof", "nqn": NQN, "size-gib": 2, "hosts": ["nqn.2026-11.test.bsud:h"],
                     "address": "127.0.0.1", "port": 4421}]})
    rec = ScriptedDrive(spec, cloud, CloudSnapshot(cloud), Provider.LOCAL)
    rec.next_obs = replace_(SETTLED, usage=UsageObs(used=5 << 30, free=5 << 30, size=10 << 30), exports=EXPORTS_OUT)
    clock = [1000.0]
    monkeypatch.setattr(engine.time, "monotonic", lambda: clock[0])
    events: list = []
    rec.listeners = [events.append]
    fake = FakeExecutor()
    rec.executor = fake  # type: ignore[assignment]

    def run(action, devices=None):
        fake.done.append(action.kind)
        if isinstance(action, ApplyExports) and fake.failing:
            error = ActionError(BUSY, temporary=True)
            error.kinds = ("nvmeof",)
            raise error
        return Outcome.CHANGED
    fake.run = run  # type: ignore[method-assign]
    fake.failing = True
    return rec, fake, clock, events


def test_a_failing_export_leaves_the_drive_online_and_is_tried_again_with_backoff(exporting):
    rec, fake, clock, events = exporting
    with pytest.raises(BsudError, match="is in use by another program") as info:
        rec.step()  # the first attempt: exporting
    assert rec.last_plan.phase == "exporting" and fake.done == ["ApplyExports"]
    assert info.value.delay == 10.0  # retry-seconds: the worker waits that long
    st = rec.status
    assert st.phase == "online" and st.exports.in_sync is False  # bsud_drive_exports_applied stays 0
    assert st.exports.error == BUSY and st.exports.failing == (f"nvmeof:{NQN}",) and st.exports.attempts == 1
    assert any(note.startswith(f"export nvmeof:{NQN} not applied (1 failed attempt): {BUSY}; tried again at ")
               for note in st.notes)
    assert [(e.kind, e.result, e.export, e.reason) for e in events] == [("export", "failed", f"nvmeof:{NQN}", BUSY)]
    metrics = Metrics()  # what the metrics say of it (their listener gets the event too, and ignores it)
    metrics.event(events[0])
    metrics.publish(DaemonReport(version="t", pid=1, config="c", started=0, updated=0, drives={"d": st}, unmanaged={}))
    text = generate_latest(metrics.registry).decode()
    assert 'bsud_drive_exports_applied{drive="d"} 0.0' in text
    assert 'bsud_drive_phase{drive="d",phase="online"} 1.0' in text

    # Woken before the attempt is due (the sampler, a reload): online and idle; nothing planned for the exports.
    assert rec.step().action == Idle() and rec.status.phase == "online" and fake.done == ["ApplyExports"]
    assert rec.status.last_error == BUSY

    delays = []
    for _ in range(6):
        clock[0] += 1000
        with pytest.raises(BsudError) as again:
            rec.step()
        assert rec.last_plan.phase == "online"  # tried again, never "exporting" for ever
        delays.append(again.value.delay)
    assert delays == [20.0, 40.0, 80.0, 160.0, 300.0, 300.0]  # doubling, at most 5 minutes apart
    assert len(events) == 1 and rec.status.exports.attempts == 7  # the event is said once

    # Scaling goes first whatever the exports do.
    rec.next_obs = replace_(rec.next_obs, can_grow=True)
    assert rec.step().action == Grow() and fake.done[-1] == "Grow"
    rec.next_obs = replace_(rec.next_obs, can_grow=False)

    # It works again: applied, said once, forgotten.
    fake.failing = False
    clock[0] += 1000
    assert rec.step().action == ApplyExports() and rec.last_plan.phase == "online"
    assert [(e.kind, e.result) for e in events[1:]] == [("export", "recovered")]
    assert events[1].export == f"nvmeof:{NQN}" and events[1].environment()["BSUD_EXPORT"] == f"nvmeof:{NQN}"
    rec.next_obs = replace_(rec.next_obs, exports=replace_(EXPORTS_OUT, in_sync=True, detail=""))
    settled = rec.step()
    assert settled.action == Idle() and settled.phase == "online" and settled.notes == ()
    assert rec.status.exports.error == "" and rec.status.last_error is None and len(events) == 2
    # A later failure is a new episode: exporting first, then a new event.
    rec.next_obs = replace_(rec.next_obs, exports=EXPORTS_OUT)
    fake.failing = True
    with pytest.raises(BsudError):
        rec.step()
    assert rec.last_plan.phase == "exporting" and [(e.kind, e.result) for e in events[2:]] == [("export", "failed")]


def test_changed_exports_are_tried_at_once_and_exports_fixed_by_hand_end_the_failure(exporting):
    rec, fake, clock, events = exporting
    with pytest.raises(BsudError):
        rec.step()
    assert rec.step().action == Idle()  # held for 10 s
    rec.update_spec(rec.spec.model_copy(update={"exports": rec.spec.exports[:1]}))  # the NVMe export dropped
    rec.executor = fake  # type: ignore[assignment]
    with pytest.raises(BsudError):  # the new exports at once, not 10 s later (still online: a failure is shown)
        rec.step()
    assert fake.done == ["ApplyExports", "ApplyExports"]
    assert (rec.last_plan.action, rec.last_plan.phase) == (ApplyExports(), "online")
    assert rec.status.exports.failing == ("nvmeof",)  # withdrawing the kind failed: named by the kind
    # The port freed by hand and bsud's view in sync without its doing: the failure ends all the same.
    rec.next_obs = replace_(rec.next_obs, exports=replace_(EXPORTS_OUT, in_sync=True, detail=""))
    assert rec.step().action == Idle() and rec.exports_failure is None
    assert [(e.kind, e.result) for e in events] == [("export", "failed"), ("export", "recovered")]


def test_a_failure_before_any_kind_ran_names_every_export(exporting):
    rec, fake, clock, events = exporting

    def unmounted(action, devices=None):
        raise ActionError("not exporting: /mnt/d is not mounted", temporary=True)
    fake.run = unmounted  # type: ignore[method-assign]
    with pytest.raises(BsudError):
        rec.step()
    assert rec.status.exports.failing == ("nfs:/", f"nvmeof:{NQN}")
