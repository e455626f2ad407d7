"""Snapshot sets told apart by their tags: complete, pending, or incomplete (and why), whatever the order the cloud
lists them in."""

from __future__ import annotations

from datetime import datetime, timezone

from bsud.backup.sets import INCOMPLETE, group, member_tags, new_set_id, superseded
from bsud.cloud.base import Snapshot
from bsud.naming import (COMPLETED, ERROR, PENDING, SNAPSHOT_CONFIRMED_TAG, SNAPSHOT_FS_TAG,
                         SNAPSHOT_INCOMPLETE_TAG, SNAPSHOT_MEMBER_TAG)

WHEN = datetime(2026, 12, 5, 11, 0, 0, tzinfo=timezone.utc)


def snap(sid: str, set_id: str, index: int, count: int, state: str = COMPLETED, confirmed: bool = True,
         **extra: str) -> Snapshot:
    tags = {**member_tags(set_id, "data", index, count, "lvm", f"vol-{index}", 10, "u", WHEN),
            **({SNAPSHOT_CONFIRMED_TAG: "2026-12-05T11:00:09Z"} if confirmed else {}), **extra}
    return Snapshot(id=sid, volume_id=f"vol-{index}", size_gib=10, state=state, tags=tags)


def test_states():
    sets = {s.id: s for s in group([
        snap("s1", "a", 1, 2), snap("s0", "a", 0, 2),                                  # complete, listed backwards
        snap("s2", "b", 0, 2, PENDING), snap("s3", "b", 1, 2),                          # one still copied
        snap("s4", "c", 0, 3), snap("s5", "c", 2, 3),                                    # member 1 never made
        snap("s6", "d", 0, 1, ERROR),                                                    # the cloud failed it
        snap("s7", "e", 0, 2), snap("s8", "e", 1, 2, **{SNAPSHOT_INCOMPLETE_TAG: "members changed"}),
        snap("s9", "f", 0, 2), snap("s10", "f", 0, 2), snap("s11", "f", 1, 2),          # two for member 0
        snap("s12", "g", 0, 2), snap("s13", "g", 1, 3),                                  # counts disagree
        snap("s14", "h", 0, 2), snap("s15", "h", 1, 2, confirmed=False),                # bsud snapshot killed
    ])}
    assert sets["a"].state == COMPLETED and sets["a"].restorable and [m.id for m in sets["a"].snapshots()] == \
        ["s0", "s1"]
    assert sets["b"].state == PENDING and sets["b"].restorable
    assert sets["c"].state == INCOMPLETE and sets["c"].problems == ("no snapshot of member 1 of 3",)
    assert sets["d"].state == INCOMPLETE and sets["d"].problems == ("s6 (of vol-0) failed",)
    assert sets["e"].problems == ("members changed",)
    assert sets["f"].problems == ("two snapshots for member 0",)
    assert "its snapshots disagree on how many volumes it has" in sets["g"].problems
    assert sets["h"].state == INCOMPLETE and sets["h"].problems[0].startswith("never confirmed")
    assert not any(s.restorable for k, s in sets.items() if k not in "ab")


def test_a_member_tag_that_makes_no_sense_is_a_problem():
    bad = snap("s1", "a", 0, 1)
    bad = Snapshot(**{**bad.__dict__, "tags": {**bad.tags, SNAPSHOT_MEMBER_TAG: "2/1"}})
    (found,) = group([bad])
    assert found.problems[0] == "s1 has no valid member tag" and not found.restorable


def test_a_set_without_its_filesystems_uuid_is_never_restorable():
    # a copy restored beside the drive must get a new UUID, which only the recorded one tells apart
    bare = snap("s1", "a", 0, 1, **{SNAPSHOT_FS_TAG: ""})
    (found,) = group([bare])
    assert found.problems == ("no filesystem UUID recorded: a copy restored beside the drive would share its UUID",)
    assert found.state == INCOMPLETE and not found.restorable


def test_set_ids_sort_by_time_and_name_the_drive():
    first, later = new_set_id("data", WHEN), new_set_id("data", WHEN.replace(hour=12))
    assert first.startswith("data-20261205T110000Z-") and first < later
    line = group([snap("s0", first, 0, 1)])[0].describe()
    assert line.startswith(f"{first}  data  2026-12-05T11:00:00Z  1/1 volumes  10 GiB  lvm  completed")


def test_keep_deletes_the_older_sets_and_the_incomplete_ones_before_the_new_set():
    def at(set_id: str, hour: int, drive: str = "data", broken: bool = False) -> list[Snapshot]:
        when = WHEN.replace(hour=hour)
        made = []
        for index in range(1 if broken else 2):
            tags = {**member_tags(set_id, drive, index, 2, "btrfs", f"vol-{index}", 10, "u", when),
                    SNAPSHOT_CONFIRMED_TAG: "2026-12-05T12:00:00Z"}
            made.append(Snapshot(id=f"{set_id}-{index}", volume_id=f"vol-{index}", size_gib=10, state=COMPLETED,
                                 tags=tags))
        return made

    sets = group(at("d1", 1) + at("d2", 2) + at("d3", 3, broken=True) + at("d4", 4) + at("o1", 1, drive="other")
                 + at("d6", 6, broken=True) + at("d5", 5))
    taken = next(s for s in sets if s.id == "d5")
    assert [s.id for s in superseded(sets, "data", 2, taken)] == ["d1", "d2", "d3"]  # d4 and d5 kept
    assert [s.id for s in superseded(sets, "data", 1, taken)] == ["d1", "d2", "d3", "d4"]
    assert [s.id for s in superseded(sets, "data", 9, taken)] == ["d3"]  # d6 is newer (another run's, maybe)
    assert all(s.drive == "data" for s in superseded(sets, "data", 1, taken))
