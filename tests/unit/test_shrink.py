"""The right size after a burst: which volumes leave a drive under min-used-space-perc, chosen by the data on them.

Tables of drives (volume sizes, live data on each) → the next action, and a simulation: each planned action is
applied to a model of the drive (a removal moves the volume's data onto the volumes that stay, btrfs-style: onto
the one with the most room), then the drive is planned again, until the planner has nothing more to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pytest

from bsud.config import DriveConfig, Layout, Target
from bsud.reconcile.model import GIB, REMOVING, CreateVolume, DriveObs, MarkVolume, Pace, UsageObs, VolumeObs
from bsud.reconcile.planner import plan
from bsud.reconcile.removal import ideal_bytes, middle_percent
from bsud.reconcile.scaling import scale_decision
from bsud.reconcile.shrink import shrink_options
from bsud.storage import LayoutState

MIB = 1024**2


def spec(**kw) -> DriveConfig:
    # issue 21's drive: first volume 1 GiB, min 30 %, max 75 %, factor 100
    base = dict(name="d", target=Target.ONLINE, mount_path="/mnt/d", layout=Layout.BTRFS, initial_size_gib=1,
                max_bsu_count=10, max_used_space_perc=75, min_used_space_perc=30, disk_scale_factor_perc=100)
    base.update(kw)
    return DriveConfig(**base)


def vol(vid: str, size: int, live_gib: float | None) -> VolumeObs:
    live = None if live_gib is None else int(live_gib * GIB)
    return VolumeObs(id=vid, size_gib=size, state="in-use", attached_here=True, device=f"/dev/{vid}", member=True,
                     live_bytes=live)


def usage_of(vols: list[VolumeObs], used: int | None = None) -> UsageObs:
    total = sum(v.size_bytes for v in vols)
    used = sum(v.live_bytes or 0 for v in vols) if used is None else used
    return UsageObs(used=used, free=total - used, size=total)


def decide(s: DriveConfig, vols: list[VolumeObs], pace: Pace = Pace()):
    decision = scale_decision(s, vols, usage_of(vols), 14901, pace)
    return decision.action, decision.note


# -- one decision -------------------------------------------------------------------------------------------------

TABLE = [
    # id, spec overrides, volumes (id, GiB, live GiB), expected (kind, fields) or None
    # issue 21: 1 + 8 GiB after a burst, data deleted down to 0.7 GiB (7.7 %): the original only ever looked at
    # the 8 GiB one, which the data does not fit without — stuck at 9 GiB for good
    ("stuck-oversized-data-on-the-first", {}, [("a", 1, 0.6), ("b", 8, 0.1)], ("CreateVolume", {"size_gib": 1})),
    ("stuck-oversized-data-on-the-burst-volume", {}, [("a", 1, 0.05), ("b", 8, 0.65)],
     ("CreateVolume", {"size_gib": 1})),
    # the volume added to move data onto is there: the 8 GiB one leaves, the 1 GiB one and the new one stay
    ("then-the-emptied-one-leaves", {}, [("a", 1, 0.6), ("b", 8, 0.1), ("n", 1, 0.0)],
     ("MarkVolume", {"volume_id": "b", "value": REMOVING})),
    # the largest is the emptiest: it leaves, nothing moves
    ("largest-is-emptiest", {}, [("a", 2, 0.9), ("b", 2, 0.9), ("c", 8, 0.0)],
     ("MarkVolume", {"volume_id": "c", "value": REMOVING})),
    # the largest holds the data, two small ones hardly any: they leave (the original removed the 8 GiB one, moving
    # its 3 GiB)
    ("largest-holds-the-data", {}, [("a", 2, 0.0), ("b", 2, 0.1), ("c", 8, 3.0)],
     ("MarkVolume", {"volume_id": "a", "value": REMOVING})),
    # 2 GiB on the 8 GiB volume is 26 % of it, under min: reaching the band means moving it off (onto the 2 + 2)
    ("largest-holds-data-but-too-big-for-it", {}, [("a", 2, 0.0), ("b", 2, 0.1), ("c", 8, 2.0)],
     ("MarkVolume", {"volume_id": "c", "value": REMOVING})),
    # the smallest holds everything: add 1 GiB beside it, the two others leave (the empty one first)
    ("smallest-holds-everything", {}, [("a", 1, 0.9), ("b", 4, 0.0), ("c", 8, 0.05)],
     ("CreateVolume", {"size_gib": 1})),
    ("smallest-holds-everything-then-the-empty-one-first", {}, [("a", 1, 0.9), ("b", 4, 0.0), ("c", 8, 0.05),
                                                               ("n", 1, 0.0)],
     ("MarkVolume", {"volume_id": "b", "value": REMOVING})),
    # lvm: the same choice (the layout says what each PV's extents hold)
    ("lvm-same-choice", {"layout": Layout.LVM}, [("a", 1, 0.6), ("b", 8, 0.1)], ("CreateVolume", {"size_gib": 1})),
    ("lvm-largest-holds-the-data", {"layout": Layout.LVM}, [("a", 4, 0.0), ("b", 8, 3.0)],
     ("MarkVolume", {"volume_id": "a", "value": REMOVING})),
    # never under initial-size-gib: the ideal would be 2 GiB, the drive stays at 4
    ("floored-at-initial", {"initial_size_gib": 4}, [("a", 4, 0.5), ("b", 8, 0.2)],
     ("MarkVolume", {"volume_id": "b", "value": REMOVING})),
    ("at-initial-stays", {"initial_size_gib": 4}, [("a", 4, 0.1)], None),
    # one volume: the ideal one is added to move onto (as before)
    ("single-volume-migrates-to-ideal", {}, [("a", 9, 0.7)], ("CreateVolume", {"size_gib": 2})),
    # a replacement that would not halve the drive is not worth moving the data (hysteresis)
    ("replacement-must-halve-the-drive", {"min_used_space_perc": 40, "max_used_space_perc": 85},
     [("a", 10, 8.0), ("b", 12, 0.5)], None),
    # no slot for the new volume: the data goes onto what stays first when it fits there under the middle…
    ("no-slot-removes-first-when-it-fits", {"max_bsu_count": 3}, [("a", 2, 0.5), ("b", 1, 0.3), ("c", 8, 0.05)],
     ("MarkVolume", {"volume_id": "c", "value": REMOVING})),
    # …else the most it can do: 1 + 8 at max-bsu-count 2 keeps the 8 (a 1 GiB volume cannot hold 0.7 GiB under
    # the middle), then migrates to an ideal one once a slot is free
    ("no-slot-and-no-fit-takes-a-step", {"max_bsu_count": 2}, [("a", 1, 0.6), ("b", 8, 0.1)],
     ("MarkVolume", {"volume_id": "a", "value": REMOVING})),
    # data per volume not known (an old kernel, an unreadable map): by size, the largest first, as before
    ("unknown-live-data-by-size", {}, [("a", 2, None), ("b", 8, None)],
     ("MarkVolume", {"volume_id": "b", "value": REMOVING})),
    # not under min: nothing
    ("over-min-nothing", {}, [("a", 1, 0.6), ("b", 2, 0.4)], None),
]


@pytest.mark.parametrize(("overrides", "vols", "expected"), [r[1:] for r in TABLE], ids=[r[0] for r in TABLE])
def test_shrink_table(overrides, vols, expected):
    s = spec(**overrides)
    members = [vol(*v) for v in vols]
    used = int(0.5 * GIB) if any(v[2] is None for v in vols) else None
    decision = scale_decision(s, members, usage_of(members, used), 14901)
    action, note = decision.action, decision.note
    if expected is None:
        assert action is None, action
        return
    assert action is not None and action.kind == expected[0], (action, note)
    for key, value in expected[1].items():
        assert getattr(action, key) == value, action


def test_the_reason_says_where_the_drive_goes_and_what_moves():
    action, _ = decide(spec(), [vol("a", 1, 0.6), vol("b", 8, 0.1)])
    assert isinstance(action, CreateVolume)
    assert "used 7.8% <= 30%" in action.reason
    assert "adding a 1 GiB volume, removing b (8 GiB): 2 GiB at the end (used 35.0%), moving 102 MiB" in action.reason


# -- the quiet hour, growth first ---------------------------------------------------------------------------------

def test_no_step_down_into_a_burst():
    members = [vol("a", 1, 0.6), vol("b", 8, 0.1)]
    # written at 50 MB/s within the last minute: full within the hour at that rate
    action, note = decide(spec(), members, Pace(write_rate=0.0, recent_peak=50e6, grow_seconds=5.0))
    assert action is None and "no scale-down while written" in note
    # a trickle does not hold it back
    action, _ = decide(spec(), members, Pace(write_rate=1000.0, recent_peak=1000.0, grow_seconds=5.0))
    assert isinstance(action, CreateVolume)


def test_the_quiet_hour_holds_the_removal_after_the_volume_came():
    members = [vol("a", 1, 0.6), vol("b", 8, 0.1), vol("n", 1, 0.0)]
    action, note = decide(spec(), members, Pace(recent_peak=20e6, grow_seconds=5.0))
    assert action is None and "no scale-down" in note


def test_growth_comes_first():
    members = [vol("a", 1, 0.6), vol("b", 8, 0.1)]
    # 2.6 GB/s: full within 3 grow times of 5 s even at 7.8 % used — a scale-up, not a step down
    action, _ = decide(spec(), members, Pace(write_rate=2.6e9, recent_peak=2.6e9, grow_seconds=5.0))
    assert isinstance(action, CreateVolume) and "full in" in action.reason


def test_a_held_removal_is_not_planned():
    s = spec()
    vols = (vol("a", 1, 0.6), vol("b", 8, 0.1), vol("n", 1, 0.0))
    obs = DriveObs(name="d", volumes=vols, storage=LayoutState(has_filesystem=True), mounted=True, active=True,
                   usage=usage_of(list(vols)),
                   removal_held=(("b", "failed 3 times"),))
    p = plan(s, obs)
    assert p.action.kind == "Idle" and any("not removing b for now" in n for n in p.notes)


# -- step by step, to the end -------------------------------------------------------------------------------------

@dataclass
class Drive:
    """A model of a btrfs drive: volumes with the data on each; a removal moves its data onto the others."""

    sizes: dict[str, int]
    live: dict[str, int]
    moved: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, vols: list[tuple[str, int, float]]) -> Drive:
        return cls({v: s for v, s, _ in vols}, {v: int(g * GIB) for v, _, g in vols})

    def members(self) -> list[VolumeObs]:
        return [VolumeObs(id=v, size_gib=s, state="in-use", attached_here=True, device=f"/dev/{v}", member=True,
                          live_bytes=self.live[v]) for v, s in self.sizes.items()]

    @property
    def used(self) -> int:
        return sum(self.live.values())

    @property
    def capacity_gib(self) -> int:
        return sum(self.sizes.values())

    def apply(self, action) -> None:
        if isinstance(action, CreateVolume):
            vid = f"n{len(self.added)}"
            self.sizes[vid], self.live[vid] = action.size_gib, 0
            self.added.append(action.size_gib)
            self.steps.append(f"+{action.size_gib}")
            return
        assert isinstance(action, MarkVolume) and action.value == REMOVING
        vid = action.volume_id
        data = self.live.pop(vid)
        del self.sizes[vid]
        self.moved.append(data)
        self.steps.append(f"-{vid}")
        chunk = 256 * MIB  # chunk by chunk onto the volume with the most room, as btrfs allocates
        while data > 0:
            piece = min(chunk, data)
            target = max(self.sizes, key=lambda v: (self.sizes[v] * GIB - self.live[v], v))
            assert self.sizes[target] * GIB - self.live[target] >= piece, "the data does not fit"
            self.live[target] += piece
            data -= piece


def converge(s: DriveConfig, drive: Drive, limit: int = 12) -> Drive:
    middle = middle_percent(s)
    for _ in range(limit):
        members = drive.members()
        decision = scale_decision(s, members, usage_of(members), 14901)
        action = decision.action
        if action is None:
            return drive
        drive.apply(action)
        pct = 100 * drive.used / (drive.capacity_gib * GIB)
        assert pct <= middle, f"used {pct:.1f}% after {drive.steps}"      # never over the middle on the way
        assert drive.capacity_gib >= s.initial_size_gib                     # never under initial-size-gib
    raise AssertionError(f"no end after {limit} steps: {drive.steps}")


def ideal_gib(s: DriveConfig, used: int) -> int:
    return math.ceil(ideal_bytes(s, UsageObs(used=used, free=0, size=0)) / GIB)


def test_issue21_stuck_oversized_converges_step_by_step():
    s = spec()
    drive = converge(s, Drive.of([("a", 1, 0.6), ("b", 8, 0.1)]))
    assert drive.steps == ["+1", "-b"]
    assert drive.capacity_gib <= ideal_gib(s, drive.used) + 1 and drive.capacity_gib == 2
    assert drive.added == [1]                           # at most one replacement
    assert sum(drive.moved) == int(0.1 * GIB)           # only what was on the 8 GiB volume moved
    # the original's rule would have stayed at 9 GiB: the data does not fit under the middle without the largest
    assert 100 * drive.used / GIB > middle_percent(s)


CONVERGE = [
    # id, spec overrides, volumes, the bytes that have to move at the least (GiB)
    ("data-on-the-first", {}, [("a", 1, 0.6), ("b", 8, 0.1)], 0.1),
    ("data-on-the-burst-volume", {}, [("a", 1, 0.05), ("b", 8, 0.65)], 0.65),
    ("largest-emptiest", {}, [("a", 2, 0.9), ("b", 2, 0.9), ("c", 8, 0.0)], 0.0),
    ("largest-holds-the-data", {}, [("a", 2, 0.0), ("b", 2, 0.1), ("c", 8, 3.0)], 0.1),
    ("smallest-holds-everything", {}, [("a", 1, 0.9), ("b", 4, 0.0), ("c", 8, 0.05)], 0.05),
    ("after-a-36-gib-burst", {}, [("a", 1, 0.5), ("b", 36, 0.2)], 0.2),
    # 0.4 GiB has to leave; btrfs puts a removed device's chunks on the device with the most room, which is one
    # still to leave while there is one: the 16 GiB volume's 0.1 GiB moves twice (the emptiest leaves first)
    ("three-bursts", {}, [("a", 1, 0.3), ("b", 4, 0.1), ("c", 8, 0.2), ("d", 16, 0.1)], 0.6),
    ("lvm", {"layout": Layout.LVM}, [("a", 1, 0.6), ("b", 8, 0.1)], 0.1),
    ("initial-4", {"initial_size_gib": 4}, [("a", 4, 0.5), ("b", 8, 0.2)], 0.2),
    ("single", {}, [("a", 9, 0.7)], 0.7),
    ("no-slot", {"max_bsu_count": 2}, [("a", 1, 0.6), ("b", 8, 0.1)], 0.1),
]


@pytest.mark.parametrize(("overrides", "vols", "least"), [r[1:] for r in CONVERGE], ids=[r[0] for r in CONVERGE])
def test_converges_to_the_ideal(overrides, vols, least):
    s = spec(**overrides)
    drive = converge(s, Drive.of(vols))
    ideal = ideal_gib(s, drive.used)
    pct = 100 * drive.used / (drive.capacity_gib * GIB)
    # in the band (over min, at most the middle), or as small as it gets
    assert s.min_used_space_perc < pct <= middle_percent(s) or drive.capacity_gib <= max(ideal, s.initial_size_gib)
    assert len(drive.added) <= 1, drive.steps
    if overrides.get("max_bsu_count") == 2:
        # no slot for the new volume: the 1 GiB volume's data moves onto the 8 GiB one first, then all of it
        assert sum(drive.moved) <= int(1.4 * GIB), drive.steps
    else:
        assert sum(drive.moved) <= int(least * GIB) + 1, (drive.steps, drive.moved)


def test_every_way_down_keeps_used_under_the_middle():
    s = spec()
    members = [vol("a", 1, 0.3), vol("b", 4, 0.1), vol("c", 8, 0.2), vol("d", 16, 0.1)]
    u = usage_of(members)
    for option in shrink_options(s, members, u, 14901):
        assert option.used_after <= middle_percent(s)
        assert option.capacity_gib >= s.initial_size_gib
        assert option.capacity_gib < 29
    best = shrink_options(s, members, u, 14901)[0]
    assert best.converged and best.capacity_gib == 2 and best.add_gib == 1


def test_a_grid_of_drives_all_converge():
    """A first volume and a burst's volume, data deleted down to 0.2–1 GiB spread any way between them: each ends,
    in a few steps, at most 1 GiB over its ideal size. No byte moves more than twice (btrfs puts a removed device's
    chunks on the device with the most room, which may be the other one leaving)."""
    s = spec()
    for first in (1, 2):
        for burst in (4, 8, 16, 36):
            for share in (0.0, 0.25, 0.5, 0.9, 1.0):
                for data in (0.2, 0.5, 0.7, 1.0):
                    on_first = min(first * 0.9, data * share)
                    drive = converge(s, Drive.of([("a", first, on_first), ("b", burst, data - on_first)]))
                    ideal = ideal_gib(s, drive.used)
                    assert drive.capacity_gib <= max(ideal + 1, first), (first, burst, share, data, drive.steps)
                    assert sum(drive.moved) <= int(2 * data * GIB) + 1, (first, burst, share, data, drive.steps)


# -- the observation carries it ---------------------------------------------------------------------------------

def test_the_live_data_is_read_only_when_the_planner_may_remove_a_volume():
    from bsud.reconcile.observe import with_live_data

    class Layout:
        calls = 0

        def live_bytes(self, mount_point, devices):
            Layout.calls += 1
            return {"/dev/a": 600 * MIB, "/dev/b": 100 * MIB}

    s = spec()
    vols = [VolumeObs(id=v, size_gib=g, state="in-use", device=f"/dev/{v}", member=True) for v, g in
            (("a", 1), ("b", 8))]
    under = usage_of(vols, used=700 * MIB)
    got = with_live_data(s, Layout(), vols, under)
    assert [v.live_bytes for v in got] == [600 * MIB, 100 * MIB]
    over = usage_of(vols, used=5 * GIB)
    assert with_live_data(s, Layout(), vols, over) == vols          # over min: not read
    assert with_live_data(s, Layout(), vols[:1], under) == vols[:1]  # one volume: not read
    assert Layout.calls == 1


def test_a_volume_added_to_move_data_onto_is_not_taken_out_again_for_the_metadata_overhead():
    """btrfs's metadata and system chunks take their share of every size: the data capacity is under the sum of the
    volumes. An ideal size counted on the data alone (2.3 GiB / 57.5 % → 4 GiB) ended over the middle once there
    (64.6 %), so the next plan found no way that converges and took the new, empty volume out again — create,
    remove, create… (the host lane's 4 + 4 + 4 + 10 GiB drive holding 2.25 GiB). The plan after the new volume
    keeps it."""
    s = spec(initial_size_gib=4, min_used_space_perc=40, max_used_space_perc=85, disk_scale_factor_perc=20)
    vols = [vol("a", 4, 0.0), vol("b", 4, 0.05), vol("c", 10, 2.25)]
    overhead = 900 * MIB  # metadata (DUP) and system chunks allocated on the devices

    def usage(vs: list[VolumeObs]) -> UsageObs:
        total = sum(v.size_bytes for v in vs)
        used = sum(v.live_bytes or 0 for v in vs)
        return UsageObs(used=used, free=total - overhead - used, size=total)

    decision = scale_decision(s, vols, usage(vols), 14901)
    action, note = decision.action, decision.note
    assert isinstance(action, CreateVolume), (action, note)
    after = [*vols, vol("n", action.size_gib, 0.0)]
    decision = scale_decision(s, after, usage(after), 14901)
    again, note = decision.action, decision.note
    assert isinstance(again, MarkVolume) and again.volume_id != "n", (again, note)
    (best,) = shrink_options(s, after, usage(after), 14901)[:1]
    assert "n" in best.keep and best.used_after <= middle_percent(s), best


# -- metadata: a removal that would fill it is no way down -----------------------------------------------------------

def metadata_heavy(total_gib: int) -> UsageObs:
    """Many small files: 0.5 GiB of data in 1 GiB of data chunks, 3.9 GiB of metadata in 4 GiB of DUP chunks."""
    d_alloc, d_used, m_alloc, m_used = GIB, GIB // 2, 4 * GIB, int(3.9 * GIB)
    unallocated = total_gib * GIB - d_alloc - 2 * m_alloc
    return UsageObs(used=d_used, free=d_alloc - d_used + unallocated, size=total_gib * GIB,
                    metadata_used=m_used, metadata_free=m_alloc - m_used + unallocated // 2)


def test_a_drive_grown_for_its_metadata_is_not_shrunk_back_into_it():
    # the defaults (min 40, max 85, factor 20): metadata 86.7 % grows the drive; with the new volume data is 3.6 %,
    # under min — judged on the data alone, the new volume left again (metadata 86.7 %), and the grow came back:
    # a create/delete loop for ever, with no write at all
    s = DriveConfig(name="d", target=Target.ONLINE, mount_path="/mnt/d", layout=Layout.BTRFS)
    vols = [vol("a", 10, 4.5)]
    grow = scale_decision(s, vols, metadata_heavy(10), 14901, Pace()).action
    assert isinstance(grow, CreateVolume) and grow.size_gib == 12
    vols.append(vol("n", grow.size_gib, 0.0))
    after = metadata_heavy(22)
    assert after.used_percent < s.min_used_space_perc and after.metadata_percent < s.max_used_space_perc
    decision = scale_decision(s, vols, after, 14901, Pace())
    assert decision.action is None, decision.action
    assert all(o.remove != ("n",) for o in shrink_options(s, vols, after, 14901))


def test_an_lvm_removal_is_judged_at_the_size_its_move_shrinks_the_drive_to():
    # lvm shrinks the filesystem to the ideal size (here 10 GiB) before the pvmove, below the 20 GiB the volumes that
    # stay hold: a 40 MB/s writer is "full in 131 s" there, fewer than 3 grow times of 60 s, so the sampler stops the
    # move — judged at 20 GiB the removal looked fine and was started again, and stopped again, for as long as the
    # writer ran. Judged at the shrunk size it is abandoned.
    defaults = dict(initial_size_gib=10, max_used_space_perc=85, min_used_space_perc=40, disk_scale_factor_perc=20)
    s = spec(layout=Layout.LVM, **defaults)
    vols = [VolumeObs(id=i, size_gib=10, state="in-use", attached_here=True, device=f"/dev/{i}", member=True,
                      live_bytes=5 * GIB // 3, bookkeeping=REMOVING if i == "a" else None) for i in "abc"]
    writer = Pace(write_rate=40e6, recent_peak=40e6, grow_seconds=60)
    obs = DriveObs(name="d", volumes=tuple(vols), mounted=True, active=True, pace=writer,
                   storage=LayoutState(members=frozenset(v.device for v in vols), has_filesystem=True, active=True,
                                       fs_device="/dev/d/bsud"),
                   usage=UsageObs(used=5 * GIB, free=25 * GIB, size=30 * GIB))
    action = plan(s, obs).action
    assert isinstance(action, MarkVolume) and action.volume_id == "a" and action.value == "", action
    assert "abandoning the removal of a" in action.reason
    quiet = plan(s, replace(obs, pace=Pace(grow_seconds=60))).action  # no writer: the removal goes on
    assert type(quiet).__name__ == "RemoveFromDrive" and quiet.keep_bytes == 10 * GIB
    btrfs = plan(spec(layout=Layout.BTRFS, **defaults), obs).action  # btrfs removes the device whole: judged at 20 GiB
    assert type(btrfs).__name__ == "RemoveFromDrive"


def test_an_lvm_removal_shrinks_the_filesystem_to_the_ideal_data_pool_plus_its_metadata():
    # many small files: 2 GiB of data, 3 GiB of metadata chunks (6 GiB on the devices, DUP). Shrunk to the ideal data
    # pool alone (3.4 GiB), the resize fails with ENOSPC and the removal is held for an hour: the metadata and system
    # chunks' device bytes come on top.
    s = spec(layout=Layout.LVM, initial_size_gib=1, max_used_space_perc=85, min_used_space_perc=40,
             disk_scale_factor_perc=20)
    mib = 1024**2
    meta_chunks, system = 3 * GIB, 32 * mib
    vols = [VolumeObs(id=i, size_gib=10, state="in-use", attached_here=True, device=f"/dev/{i}", member=True,
                      live_bytes=2 * GIB // 3, bookkeeping=REMOVING if i == "a" else None) for i in "abc"]
    pool = 30 * GIB - 2 * meta_chunks - system
    usage = UsageObs(used=2 * GIB, free=pool - 2 * GIB, size=30 * GIB, metadata_used=2 * GIB,
                     metadata_free=GIB + (pool - 4 * GIB) // 2)
    obs = DriveObs(name="d", volumes=tuple(vols), mounted=True, active=True, pace=Pace(grow_seconds=60),
                   storage=LayoutState(members=frozenset(v.device for v in vols), has_filesystem=True, active=True,
                                       fs_device="/dev/d/bsud"), usage=usage)
    action = plan(s, obs).action
    assert type(action).__name__ == "RemoveFromDrive", action
    assert action.keep_bytes == ideal_bytes(s, usage) + 2 * meta_chunks + system
    assert action.keep_bytes >= usage.used + 2 * meta_chunks + system + GIB  # the data, its metadata, and room


def test_a_removal_counts_the_data_chunks_slack_its_packing_gives_the_metadata_back():
    # tests/host/test_right_size.py's end: one 4 GiB volume, 0.7 GiB of data in 2 GiB of data chunks, metadata DUP
    # hardly used. Counting the 2 GiB that go off the metadata's unallocated room alone left it none ("metadata
    # full"), and the drive stayed at 4 GiB under min; the relocation packs the data and frees the chunks' slack.
    mib = 1024**2
    data_chunks, meta_chunks, system = 2 * GIB, 256 * mib, 32 * mib
    unallocated = 4 * GIB - data_chunks - 2 * meta_chunks - system
    used, meta_used = 700 * mib, 5 * mib
    usage = UsageObs(used=used, free=data_chunks - used + unallocated, size=4 * GIB, metadata_used=meta_used,
                     metadata_free=meta_chunks - meta_used + unallocated // 2)
    action = scale_decision(spec(), [vol("a", 4, 0.7)], usage, 14901, Pace()).action
    assert isinstance(action, CreateVolume) and action.size_gib == 2, action
