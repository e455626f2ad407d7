"""Events from a drive's steps (pure): a scale-up from decision to usable capacity, a scale-down to its volume
retired, a failure inside a scale event, a block and its recovery, an export failing and applied again — each
reported once."""

from __future__ import annotations

from bsud.reconcile.events import (
    ABANDONED,
    BLOCKED,
    DONE,
    EXPORT,
    FAILED,
    RECOVERED,
    SCALE_DOWN,
    SCALE_UP,
    STARTED,
    Event,
    EventTracker,
)
from bsud.reconcile.model import (
    Direction,
    AttachVolume,
    Blocked,
    CreateVolume,
    DriveObs,
    Grow,
    Idle,
    Join,
    MarkVolume,
    Plan,
    RemoveFromDrive,
    RetireVolume,
    VolumeObs,
)

OBS = DriveObs(name="d", volumes=(VolumeObs(id="v1", size_gib=10, state="in-use"),
                                  VolumeObs(id="v0", size_gib=4, state="deleting")))


def kinds(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.kind, e.result) for e in events]


def test_a_scale_up_starts_at_the_decision_and_ends_when_the_capacity_is_usable():
    t = EventTracker("d")
    create = Plan(CreateVolume(size_gib=12, reason="used 90% > 85%"), "scaling-up", direction=Direction.UP)
    started = t.executing(create, OBS, now=100.0)
    assert kinds(started) == [(SCALE_UP, STARTED)]
    assert started[0].volume_gib == 12 and started[0].drive_gib == 10 and started[0].reason == "used 90% > 85%"
    assert t.executed(create, OBS, now=101.0, created="v2") == []
    # The steps that follow belong to the same event: nothing new is said.
    for step in (Plan(AttachVolume(volume_id="v2"), "attaching"),
                 Plan(Join(volume_id="v2"), "scaling-up", direction=Direction.UP),
                 Plan(Grow(), "growing")):
        assert t.executing(step, OBS, now=102.0) == [] and t.executed(step, OBS, now=103.0) == []
    done = t.grew(took=21.5, obs=OBS)
    assert kinds(done) == [(SCALE_UP, DONE)]
    assert (done[0].volume, done[0].volume_gib, done[0].duration, done[0].direction) == ("v2", 12, 21.5, "up")
    assert t.grew(took=3.0, obs=OBS) == []  # a later growth is no scale event


def test_a_failure_inside_a_scale_event_is_reported_and_the_event_stays_open():
    t = EventTracker("d")
    create = Plan(CreateVolume(size_gib=12), "scaling-up", direction=Direction.UP)
    t.executing(create, OBS, now=100.0)
    failed = t.failed(Plan(AttachVolume(volume_id="v2"), "attaching"), OBS, "AttachVolume: throttled", now=130.0)
    assert kinds(failed) == [(SCALE_UP, FAILED)] and failed[0].duration == 30.0
    assert failed[0].reason == "AttachVolume: throttled"
    assert kinds(t.grew(took=40.0, obs=OBS)) == [(SCALE_UP, DONE)]
    # Outside a scale event a failure is no event (it is counted as a step error by the engine).
    assert t.failed(Plan(Grow(), "growing"), OBS, "boom", now=200.0) == []


def test_a_scale_down_runs_from_its_first_step_to_the_volume_retired():
    t = EventTracker("d")
    mark = Plan(MarkVolume(volume_id="v1", value="removing", reason="used 20% < 40%"), "scaling-down",
                direction=Direction.DOWN)
    assert kinds(t.executing(mark, OBS, now=10.0)) == [(SCALE_DOWN, STARTED)]
    remove = Plan(RemoveFromDrive(volume_id="v1"), "scaling-down", direction=Direction.DOWN)
    assert t.executing(remove, OBS, now=11.0) == [] and t.executed(remove, OBS, now=50.0) == []
    retire = Plan(RetireVolume(volume_id="v1"), "scaling-down", direction=Direction.DOWN)
    done = t.executed(retire, OBS, now=70.0)
    assert kinds(done) == [(SCALE_DOWN, DONE)] and done[0].duration == 60.0 and done[0].volume == "v1"


def test_an_abandoned_scale_down_says_so():
    t = EventTracker("d")
    t.executing(Plan(MarkVolume(volume_id="v1", value="removing"), "scaling-down", direction=Direction.DOWN), OBS,
                now=0.0)
    abandon = Plan(MarkVolume(volume_id="v1", value="", reason="the data grew"), "scaling-down",
                   direction=Direction.DOWN)
    assert kinds(t.executed(abandon, OBS, now=5.0)) == [(SCALE_DOWN, ABANDONED)]


def test_a_block_is_said_once_and_its_end_once():
    t = EventTracker("d")
    blocked = Plan(Blocked(reason="volume v1 is attached to i-other"), "blocked")
    first = t.planned(blocked, OBS)
    assert kinds(first) == [(BLOCKED, "")] and first[0].reason == "volume v1 is attached to i-other"
    assert t.planned(blocked, OBS) == []
    assert kinds(t.planned(Plan(Idle(reason="online"), "online"), OBS)) == [(RECOVERED, "")]
    assert t.planned(Plan(Idle(reason="online"), "online"), OBS) == []


def test_the_on_event_environment_names_every_fact():
    event = Event(SCALE_UP, "data", result=DONE, volume="vol-1", volume_gib=12, drive_gib=22, duration=21.46,
                  reason="the new capacity is usable", time=0.0)
    assert event.environment() == {
        "BSUD_EVENT": "scale-up", "BSUD_DRIVE": "data", "BSUD_RESULT": "done", "BSUD_VOLUME": "vol-1",
        "BSUD_VOLUME_GIB": "12", "BSUD_DRIVE_GIB": "22", "BSUD_DURATION_SECONDS": "21.5",
        "BSUD_REASON": "the new capacity is usable", "BSUD_TIME": "1970-01-01T00:00:00+00:00",
    }


def test_a_failing_export_is_said_once_and_its_end_once():
    t = EventTracker("d")
    assert t.exports_applied(OBS) == []  # nothing failed: nothing to say
    failed = t.exports_failed(OBS, "port 127.0.0.1:4421 is in use by another program", ("nvmeof:nqn.x:y",))
    assert kinds(failed) == [(EXPORT, FAILED)] and failed[0].reason.startswith("port 127.0.0.1:4421")
    assert failed[0].environment()["BSUD_EXPORT"] == "nvmeof:nqn.x:y" and failed[0].direction is None
    assert t.exports_failed(OBS, "again", ("nvmeof:nqn.x:y",)) == []
    recovered = t.exports_applied(OBS)
    assert kinds(recovered) == [(EXPORT, "recovered")] and recovered[0].export == "nvmeof:nqn.x:y"
    assert t.exports_applied(OBS) == []
