"""Snapshot sets as the cloud lists them: one snapshot per member volume of a drive, told apart by their tags
(``bsud.naming.SNAPSHOT_*``), grouped back into sets, each completed, pending or incomplete.

A set is **complete** when it has a snapshot for each of its members (``0/N`` … ``N-1/N``), none failed, and no
``incomplete`` mark: only then is it restored. It is *pending* while the cloud still copies some (it can be restored
then: a volume made from a pending snapshot reads its content as of the call), *incomplete* otherwise — a member
missing (bsud stopped between two calls, a call failed), a snapshot in error, or marked so by bsud (the drive's
membership changed while it was frozen).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from bsud.cloud.base import Snapshot
from bsud.naming import (COMPLETED, ERROR, PENDING, SNAPSHOT_CONFIRMED_TAG, SNAPSHOT_DRIVE_TAG, SNAPSHOT_FS_TAG,
                         SNAPSHOT_INCOMPLETE_TAG, SNAPSHOT_LAYOUT_TAG, SNAPSHOT_MEMBER_TAG, SNAPSHOT_SET_TAG,
                         SNAPSHOT_SIZE_TAG, SNAPSHOT_SOURCE_TAG, SNAPSHOT_TIME_TAG, member_place)

INCOMPLETE = "incomplete"


def new_set_id(drive: str, when: datetime) -> str:
    """``<drive>-20261205T114500Z-1a2b``: sorts by time, unique, readable in a listing."""
    return f"{drive}-{when.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


def member_tags(set_id: str, drive: str, index: int, count: int, layout: str, source: str, size_gib: int,
                fs_uuid: str, when: datetime, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tags of one member's snapshot (the user's own ``extra`` first: bsud's are never hidden)."""
    return {**(extra or {}), SNAPSHOT_SET_TAG: set_id, SNAPSHOT_DRIVE_TAG: drive,
            SNAPSHOT_MEMBER_TAG: f"{index}/{count}", SNAPSHOT_LAYOUT_TAG: layout, SNAPSHOT_SOURCE_TAG: source,
            SNAPSHOT_SIZE_TAG: str(size_gib), SNAPSHOT_FS_TAG: fs_uuid,
            SNAPSHOT_TIME_TAG: when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


@dataclass(frozen=True)
class SnapshotSet:
    id: str
    drive: str
    layout: str
    fs_uuid: str
    time: str
    count: int                                  # members the set was taken of
    #: member index → its snapshot (one each; a duplicate index makes the set incomplete)
    members: dict[int, Snapshot] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        if self.problems:
            return INCOMPLETE
        if any(s.state != COMPLETED for s in self.members.values()):
            return PENDING
        return COMPLETED

    @property
    def restorable(self) -> bool:
        return not self.problems

    @property
    def size_gib(self) -> int:
        return sum(int(s.tags.get(SNAPSHOT_SIZE_TAG) or s.size_gib) for s in self.members.values())

    def snapshots(self) -> list[Snapshot]:
        return [self.members[i] for i in sorted(self.members)]

    def describe(self) -> str:
        """One line: id, drive, time, members, size, state (and why incomplete)."""
        text = (f"{self.id}  {self.drive}  {self.time}  {len(self.members)}/{self.count} volumes  "
                f"{self.size_gib} GiB  {self.layout}  {self.state}")
        return text + (f": {'; '.join(self.problems)}" if self.problems else "")


def group(snapshots: Iterable[Snapshot]) -> list[SnapshotSet]:
    """The sets the snapshots belong to, oldest first."""
    by_set: dict[str, list[Snapshot]] = {}
    for snap in snapshots:
        if snap.tags.get(SNAPSHOT_SET_TAG):
            by_set.setdefault(snap.tags[SNAPSHOT_SET_TAG], []).append(snap)
    found = []
    for set_id, snaps in by_set.items():
        first = snaps[0].tags
        problems: list[str] = []
        members: dict[int, Snapshot] = {}
        counts = set()
        for snap in snaps:
            place = member_place(snap.tags.get(SNAPSHOT_MEMBER_TAG))
            if place is None:
                problems.append(f"{snap.id} has no valid member tag")
                continue
            counts.add(place[1])
            if place[0] in members:
                problems.append(f"two snapshots for member {place[0]}")
            members[place[0]] = snap
            if snap.state == ERROR:
                problems.append(f"{snap.id} (of {snap.volume_id or snap.tags.get(SNAPSHOT_SOURCE_TAG)}) failed")
            why = snap.tags.get(SNAPSHOT_INCOMPLETE_TAG)
            if why and why not in problems:
                problems.append(why)
        count = max(counts) if counts else 0
        if len(counts) > 1:
            problems.append("its snapshots disagree on how many volumes it has")
        lacking = [str(i) for i in range(count) if i not in members]
        if lacking:
            problems.append(f"no snapshot of member{'s' if len(lacking) > 1 else ''} {', '.join(lacking)} of {count}")
        if not first.get(SNAPSHOT_FS_TAG):
            problems.append("no filesystem UUID recorded: a copy restored beside the drive would share its UUID")
        if not problems and any(not snap.tags.get(SNAPSHOT_CONFIRMED_TAG) for snap in snaps):
            problems.append("never confirmed: its 'bsud snapshot' did not end (killed after the snapshots were "
                            "started, or running still)")
        found.append(SnapshotSet(id=set_id, drive=first.get(SNAPSHOT_DRIVE_TAG, ""),
                                 layout=first.get(SNAPSHOT_LAYOUT_TAG, ""), fs_uuid=first.get(SNAPSHOT_FS_TAG, ""),
                                 time=first.get(SNAPSHOT_TIME_TAG, ""), count=count, members=members,
                                 problems=tuple(problems)))
    return sorted(found, key=lambda s: (s.time, s.id))


def superseded(sets: Iterable[SnapshotSet], drive: str, keep: int, taken: SnapshotSet) -> list[SnapshotSet]:
    """What ``bsud snapshot --keep N`` deletes once ``taken`` (a set of ``drive`` just made) is there: the drive's
    sets beyond the newest ``keep`` that are not incomplete (``taken`` always among those kept), and its
    incomplete sets older than ``taken`` (never restorable). Another drive's sets are never touched."""
    mine = [s for s in sets if s.drive == drive and s.id != taken.id]
    good = sorted((s for s in mine if s.state != INCOMPLETE), key=lambda s: (s.time, s.id), reverse=True)
    old = good[max(keep - 1, 0):]
    broken = [s for s in mine if s.state == INCOMPLETE and (s.time, s.id) < (taken.time, taken.id)]
    return sorted(old + broken, key=lambda s: (s.time, s.id))
