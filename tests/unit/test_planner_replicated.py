"""The planner for a highly available drive (DRBD on the drive's LV, a peer drive on the other node): tables of
observed states → the next action (pure, no I/O)."""

from __future__ import annotations

import pytest

from bsud.config import DriveConfig, Layout, Target
from bsud.config.ha import HaConfig
from bsud.reconcile.model import GIB, DriveObs, Pace, PeerObs, PeerVolume, UsageObs, VolumeObs
from bsud.reconcile.planner import plan
from bsud.storage import LayoutState, Replication, usable_bytes

from .test_planner import vol  # a volume as the planner's tables write it

HA = HaConfig(drbd_resource="data", peer_drive="data-b", service_ip="10.0.0.50/24")
PEER_VM = "i-0b"


def spec(target: Target = Target.ONLINE, **kw) -> DriveConfig:
    base = dict(name="data-a", target=target, mount_path="/srv/data", layout=Layout.LVM, initial_size_gib=10,
                max_bsu_count=10, max_used_space_perc=85, min_used_space_perc=40, disk_scale_factor_perc=20,
                exports=(), ha=HA)
    base.update(kw)
    return DriveConfig(**base)


def peer(*sizes: int, attached: bool = True, new: tuple[int, ...] = (), instance: str | None = PEER_VM) -> PeerObs:
    return PeerObs(drive="data-b", instance=instance, volumes=tuple(
        PeerVolume(id=f"vol-b{i}", size_gib=size, state="in-use" if attached and i not in new else "available",
                   bookkeeping="new" if i in new else None,
                   attached_to=PEER_VM if attached and i not in new else None)
        for i, size in enumerate(sizes)))


def drbd(role: str = "Primary", connection: str = "Connected", lv_gib: int = 10, drbd_gib: float | None = None,
         up: bool = True, error: str | None = None) -> Replication:
    backing = lv_gib * GIB
    size = usable_bytes(backing) if drbd_gib is None else int(drbd_gib * GIB)
    return Replication("data", device="/dev/drbd1000", up=up, role=role if up else "", connection=connection if up
                       else "", disk="UpToDate", peer_disk="UpToDate", size=size if up else 0, backing_size=backing,
                       error=error)


def observed(*vols: VolumeObs, repl: Replication, the_peer: PeerObs | None = None, used: float | None = None,
             mounted: bool | None = None, can_grow: bool = False, pace: Pace = Pace()) -> DriveObs:
    total = repl.size / GIB
    is_mounted = repl.primary and used is not None if mounted is None else mounted
    use = UsageObs(used=int(used * GIB), free=int((total - used) * GIB), size=int(total * GIB)) \
        if used is not None else None
    return DriveObs(name="data-a", volumes=tuple(vols), peer=the_peer if the_peer is not None else peer(10),
                    storage=LayoutState(members=frozenset(v.device for v in vols if v.member and v.device),
                                        has_filesystem=True, fs_device="/dev/data-a/bsud", active=True,
                                        replication=repl),
                    mounted=is_mounted, active=True, usage=use, can_grow=can_grow, pace=pace)


def step(s: DriveConfig, o: DriveObs) -> tuple[str, dict]:
    p = plan(s, o)
    fields = {k: v for k, v in p.action.__dict__.items() if k != "reason" and v not in (None, "", False)}
    return p.action.kind, fields


TABLE = [
    ("secondary-only-keeps-its-lv", spec(), observed(vol("a0"), repl=drbd("Secondary"), used=9.5),
     ("Idle", {})),
    ("resource-down-keeps-the-lv-ready", spec(), observed(vol("a0"), repl=drbd(up=False)), ("Idle", {})),
    ("resource-not-configured-yet-keeps-the-lv-ready", spec(),
     observed(vol("a0"), repl=Replication("data", configured=False, backing_size=10 * GIB)), ("Idle", {})),
    ("resource-on-another-disk-blocks", spec(),
     observed(vol("a0"), repl=drbd(error="DRBD resource 'data' has its disk on /dev/sdz, not on the drive's LV")),
     ("Blocked", {})),
    ("primary-calm-idles", spec(), observed(vol("a0"), repl=drbd(), used=2), ("Idle", {})),
    ("primary-not-mounted-idles", spec(), observed(vol("a0"), repl=drbd(), mounted=False), ("Idle", {})),
    ("primary-full-creates-its-own-volume-first", spec(), observed(vol("a0"), repl=drbd(), used=9.0),
     ("CreateVolume", {"size_gib": 12})),
    ("secondary-full-does-not-scale", spec(), observed(vol("a0"), repl=drbd("Secondary"), used=9.0,
                                                       mounted=False), ("Idle", {})),
    ("own-new-volume-then-one-for-the-peer", spec(),
     observed(vol("a0"), vol("a1", 12, state="available", attached_here=False, member=False), repl=drbd(),
              used=9.0), ("CreatePeerVolume", {"peer_drive": "data-b", "size_gib": 12})),
    ("peer-volume-attached-to-the-peer-vm-before-our-own", spec(),
     observed(vol("a0"), vol("a1", 12, state="available", attached_here=False, member=False), repl=drbd(),
              the_peer=peer(10, 12, new=(1,)), used=9.0),
     ("AttachPeerVolume", {"volume_id": "vol-b1", "peer_drive": "data-b", "instance_id": PEER_VM})),
    ("then-our-own-is-attached", spec(),
     observed(vol("a0"), vol("a1", 12, state="available", attached_here=False, member=False), repl=drbd(),
              the_peer=peer(10, 12), used=9.0), ("AttachVolume", {"volume_id": "a1"})),
    ("joined-lv-has-room-and-peer-caught-up-resizes", spec(),
     observed(vol("a0"), vol("a1", 12), repl=drbd(lv_gib=22, drbd_gib=10), the_peer=peer(10, 12), used=9.0),
     ("ResizeReplica", {})),
    ("disconnected-peer-with-its-volumes-resizes-assuming-its-space", spec(),
     observed(vol("a0"), vol("a1", 12), repl=drbd(connection="WFConnection", lv_gib=22, drbd_gib=10),
              the_peer=peer(10, 12), used=9.0), ("ResizeReplica", {"assume_peer_has_space": True})),
    ("peer-without-its-volume-is-made-one-before-any-resize", spec(),
     observed(vol("a0"), vol("a1", 12), repl=drbd(lv_gib=22, drbd_gib=10), the_peer=peer(10), used=9.0),
     ("CreatePeerVolume", {"peer_drive": "data-b", "size_gib": 12})),
    ("peer-vm-unknown-leaves-its-volume-for-its-bsud", spec(),
     observed(vol("a0"), vol("a1", 12), repl=drbd(lv_gib=22, drbd_gib=10),
              the_peer=peer(10, 12, new=(1,), instance=None), used=2.0), ("Idle", {})),
    ("fs-room-after-resize-grows", spec(),
     observed(vol("a0"), vol("a1", 12), repl=drbd(lv_gib=22), the_peer=peer(10, 12), used=9.0, can_grow=True),
     ("Grow", {})),
    ("almost-empty-does-not-shrink", spec(),
     observed(vol("a0"), vol("a1", 12), repl=drbd(lv_gib=22), the_peer=peer(10, 12), used=0.5), ("Idle", {})),
    ("fresh-volume-on-the-secondary-is-joined", spec(),
     observed(vol("a0"), vol("a1", 12, member=False, blank=True), repl=drbd("Secondary")),
     ("Join", {"volume_id": "a1"})),
    ("secondary-lv-not-grown-after-a-crash-grows", spec(),
     observed(vol("a0"), vol("a1", 12), repl=drbd("Secondary", lv_gib=10), can_grow=True), ("Grow", {})),
    ("disconnected-secondary-whose-lv-grew-takes-the-size-itself", spec(),
     observed(vol("a0"), vol("a1", 12), repl=drbd("Secondary", connection="WFConnection", lv_gib=22, drbd_gib=10),
              the_peer=peer(10, 12)), ("ResizeReplica", {"assume_peer_has_space": True})),
    ("connected-secondary-leaves-the-resize-to-the-primary", spec(),
     observed(vol("a0"), vol("a1", 12), repl=drbd("Secondary", lv_gib=22, drbd_gib=10), the_peer=peer(10, 12)),
     ("Idle", {})),
    ("disconnected-secondary-ahead-of-its-peer-waits", spec(),
     observed(vol("a0"), vol("a1", 12), repl=drbd("Secondary", connection="WFConnection", lv_gib=22, drbd_gib=10),
              the_peer=peer(10)), ("Idle", {})),
    ("offline-while-drbd-is-up-is-blocked", spec(Target.OFFLINE), observed(vol("a0"), repl=drbd("Secondary")),
     ("Blocked", {})),
    ("offline-once-drbd-is-down-deactivates", spec(Target.OFFLINE), observed(vol("a0"), repl=drbd(up=False)),
     ("Deactivate", {})),
]


@pytest.mark.parametrize("name,s,o,expected", TABLE, ids=[t[0] for t in TABLE])
def test_replicated_plan(name, s, o, expected):
    assert step(s, o) == expected


def test_the_secondary_says_who_grows_the_drive_and_the_primary_why_it_does_not_shrink():
    secondary = plan(spec(), observed(vol("a0"), repl=drbd("Secondary")))
    assert "the Primary's bsud grows the drive" in secondary.action.reason
    empty = plan(spec(), observed(vol("a0"), vol("a1", 12), repl=drbd(lv_gib=22), the_peer=peer(10, 12), used=0.5))
    assert any("does not shrink" in note for note in empty.notes), empty.notes


def test_a_resize_waits_for_the_peer_while_it_lacks_its_volume_and_says_so():
    waiting = plan(spec(), observed(vol("a0"), vol("a1", 12), repl=drbd(lv_gib=22, drbd_gib=10),
                                    the_peer=peer(10, 12, new=(1,), instance=None), used=2.0))
    assert any("waits to grow" in n and "vol-b1" in n and "ha.peer-instance" in n for n in waiting.notes), waiting


def test_a_fast_writer_on_the_primary_gets_a_volume_sized_for_its_rate():
    fast = Pace(write_rate=200 * 1024**2, recent_peak=200 * 1024**2, grow_seconds=30.0)
    p = plan(spec(), observed(vol("a0"), repl=drbd(), used=4.0, pace=fast))
    assert p.action.kind == "CreateVolume" and p.action.size_gib > 12, p


def test_a_standalone_resource_is_said_with_the_command_bsud_leaves_to_the_operator():
    p = plan(spec(), observed(vol("a0"), repl=drbd(connection="StandAlone"), used=2))
    assert any("StandAlone" in n and "drbdadm connect r0" not in n and "'drbdadm connect data'" in n
               for n in p.notes), p.notes


def test_no_action_has_a_field_the_engines_step_line_already_names():
    """The engine logs each step as ``step drive=… phase=… action=… reason=…`` plus the action's fields: a field of
    one of those names crashed every step of an ha drive's Primary in the VM (CreatePeerVolume's ``drive``)."""
    import dataclasses

    from bsud.reconcile import model

    actions = [c for c in vars(model).values() if isinstance(c, type) and issubclass(c, model.Action)]
    assert len(actions) > 20
    for action in actions:
        names = {f.name for f in dataclasses.fields(action)} - {"reason"}
        assert not names & {"drive", "phase", "action"}, (action.__name__, names)
