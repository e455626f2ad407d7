"""Snapshot sets told apart by their tags: complete, pending, or incomplete (and why), whatever the order the cloud
lists them in."""

from __future__ import annotations

from datetime import datetime, timezone

from bsud.backup.sets import INCOMPLETE, group, member_tags, new_set_id
from bsud.cloud.base import Snapshot
from bsud.naming import COMPLETED, ERROR, PENDING, SNAPSHOT_INCOMPLETE_TAG, SNAPSHOT_MEMBER_TAG

WHEN = datetime(2026, 12, 5, 11, 0, 0, tzinfo=timezone.utc)


def snap(sid: str, set_id: str, index: int, count: int, state: str = COMPLETED, **extra: str) -> Snapshot:
    tags = {**member_tags(set_id, "data", index, count, "lvm", f"vol-{index}", 10, "u", WHEN), **extra}
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
    ])}
    assert sets["a"].state == COMPLETED and sets["a"].restorable and [m.id for m in sets["a"].snapshots()] == \
        ["s0", "s1"]
    assert sets["b"].state == PENDING and sets["b"].restorable
    assert sets["c"].state == INCOMPLETE and sets["c"].problems == ("no snapshot of member 1 of 3",)
    assert sets["d"].state == INCOMPLETE and sets["d"].problems == ("s6 (of vol-0) failed",)
    assert sets["e"].problems == ("members changed",)
    assert sets["f"].problems == ("two snapshots for member 0",)
    assert "its snapshots disagree on how many volumes it has" in sets["g"].problems
    assert not any(s.restorable for k, s in sets.items() if k not in "ab")


def test_a_member_tag_that_makes_no_sense_is_a_problem():
    bad = snap("s1", "a", 0, 1)
    bad = Snapshot(**{**bad.__dict__, "tags": {**bad.tags, SNAPSHOT_MEMBER_TAG: "2/1"}})
    (found,) = group([bad])
    assert found.problems[0] == "s1 has no valid member tag" and not found.restorable


def test_set_ids_sort_by_time_and_name_the_drive():
    first, later = new_set_id("data", WHEN), new_set_id("data", WHEN.replace(hour=12))
    assert first.startswith("data-20261205T110000Z-") and first < later
    line = group([snap("s0", first, 0, 1)])[0].describe()
    assert line.startswith(f"{first}  data  2026-12-05T11:00:00Z  1/1 volumes  10 GiB  lvm  completed")
