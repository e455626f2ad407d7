"""A highly available drive, as the planner sees it: two nodes, each with its own bsud drive whose LV is one backing
device of a DRBD resource. Pure.

Nothing of bsud's own coordinates the two nodes; the cloud's tags and DRBD do:

- **Only the Primary decides.** Its bsud watches the filesystem on the DRBD device (mounted by the gateway) with the
  same live accounting and rules as any drive, and grows by the same volumes — its own (``CreateVolume``) and as
  much for the peer's drive (``CreatePeerVolume``: tagged with the peer's drive name, so it is the peer's by the
  same rule as every volume), which it attaches to the peer's VM (``AttachPeerVolume``).
- **The Secondary's bsud hears it from its host**: a disk appears (a block device event), its bsud lists the cloud,
  finds a volume of its drive attached and blank, and adds it to its LV, as it would after a crash between an
  attach and a join. It never scales on its own (it has no filesystem to watch).
- **``drbdadm resize``** once the peer's drive is as big as this one (its volumes, attached to it): DRBD takes the
  smaller of both LVs while connected, so a resize that comes before the peer's LV grew changes nothing and is
  tried again (a temporary error). While disconnected, DRBD would keep the size the peer last had: the resize
  assumes the peer has the space (``--assume-peer-has-space``) only when its volumes are there in the cloud —
  DRBD refuses the peer's connection until its LV is as large, so no byte is lost either way. A Secondary cut off
  from the Primary whose LV grew meanwhile takes its new size the same way (DRBD 8.4 moves a node's meta-data to the
  end of its LV only at a resize, and a Primary forced bigger refuses a peer that did not: measured, docs/ha.md).
- A volume never leaves a highly available drive (no shrinking: a removal would have to move data on both nodes in
  step, which nothing here can do safely).
"""

from __future__ import annotations

from bsud.config import DriveConfig
from bsud.naming import AVAILABLE, NEW
from bsud.reconcile.leaving import Step, up
from bsud.reconcile.model import (AttachPeerVolume, Blocked, CreatePeerVolume, CreateVolume, Direction, DriveObs,
                                  Idle, Phase, Plan, ResizeReplica, VolumeObs)
from bsud.reconcile.scaling import scale_decision
from bsud.storage import STANDALONE


def plan_peer(spec: DriveConfig, obs: DriveObs, live: list[VolumeObs], max_volume_gib: int) -> Step | None:
    """On the Primary: the peer's drive as big as this one — a volume made for it, attached to its VM."""
    repl, peer = obs.storage.replication, obs.peer
    if repl is None or not repl.primary or peer is None or not peer.live():
        return None  # a peer with no volume at all is not set up yet: its bsud makes its first one
    own = sum(v.size_gib for v in live)
    if peer.size_gib < own:
        size = min(own - peer.size_gib, max_volume_gib)
        return up(CreatePeerVolume(peer_drive=peer.drive, size_gib=size, reason=f"drive {peer.drive!r} (the other DRBD "
                                   f"node's) has {peer.size_gib} GiB, this one {own} GiB: a {size} GiB volume for it"))
    for v in peer.live():
        if v.state == AVAILABLE and v.attached_to is None:
            if peer.instance is None:
                return None  # said by plan_replicated's note; the peer's bsud attaches it at its next listing
            return up(AttachPeerVolume(volume_id=v.id, peer_drive=peer.drive, instance_id=peer.instance,
                                       reason=f"{v.id} of drive {peer.drive!r} is not attached: attaching it to "
                                              f"{peer.instance}, whose bsud adds it to its LV"))
    return None


def peer_caught_up(obs: DriveObs, live: list[VolumeObs]) -> str | None:
    """None when the peer's drive has as much as this one, all of it attached; else what it lacks, in words."""
    peer = obs.peer
    if peer is None:
        return "the peer's drive is not known"
    own = sum(v.size_gib for v in live)
    if peer.size_gib < own:
        return f"drive {peer.drive!r} has {peer.size_gib} GiB, this one {own} GiB"
    loose = [v.id for v in peer.live() if v.attached_to is None or v.bookkeeping == NEW]
    if loose:
        return f"{', '.join(loose)} of drive {peer.drive!r} not attached to its VM yet" + (
            "" if peer.instance else " (its VM is not known: set ha.peer-instance, or its bsud attaches it)")
    return None


def plan_replicated(spec: DriveConfig, obs: DriveObs, live: list[VolumeObs], max_volume_gib: int,
                    notes: list[str]) -> Plan:
    """The drive is assembled (its LV active, its members joined and grown): DRBD's state decides the rest."""
    repl = obs.storage.replication
    assert repl is not None
    if repl.error:
        return Plan(Blocked(reason=repl.error), Phase.BLOCKED, tuple(notes))
    name = repl.resource
    if not repl.configured:
        return Plan(Idle(reason=f"DRBD resource {name!r} is not configured on this node yet: the drive's LV is ready "
                                "to be its disk"), Phase.ONLINE, tuple(notes))
    if not repl.up:
        return Plan(Idle(reason=f"DRBD resource {name!r} is not up on this node: its backing LV is ready"),
                    Phase.ONLINE, tuple(notes))
    standalone = repl.connection == STANDALONE
    if standalone:
        notes.append(f"DRBD resource {name!r} is StandAlone: it does not try to reach its peer; once both LVs have "
                     f"grown alike, 'drbdadm connect {name}' (bsud never connects or disconnects DRBD)")
    if not repl.primary:
        if repl.room and not repl.connected and peer_caught_up(obs, live) is None:
            # Disconnected, DRBD keeps its meta-data where the old size put it, and the Primary (forced bigger while
            # apart) refuses it at the next handshake: this node takes its LV's size now, as the peer's drive has it.
            return Plan(ResizeReplica(assume_peer_has_space=True,
                                      reason=f"the LV has {repl.room} bytes more than DRBD resource {name!r} uses, "
                                             f"the peer is away ({repl.connection}) and its drive has as much: "
                                             "taking the size now, so that the next handshake agrees"),
                        Phase.GROWING, tuple(notes))
        return Plan(Idle(reason=f"{repl.role or 'not Primary'} of DRBD resource {name!r} ({repl.connection}, disk "
                                f"{repl.disk}): the Primary's bsud grows the drive"), Phase.ONLINE, tuple(notes))
    if repl.room:
        behind = peer_caught_up(obs, live)
        if behind is None:
            return Plan(ResizeReplica(assume_peer_has_space=not repl.connected,
                                      reason=f"the LV has {repl.room} bytes more than DRBD resource {name!r} uses, "
                                             "and the peer's drive as much" + (
                                                 "" if repl.connected else f" (peer {repl.connection}: assuming it "
                                                 "has the space, which its volumes give it)")),
                        Phase.GROWING, tuple(notes))
        notes.append(f"DRBD resource {name!r} waits to grow: {behind}")
    if obs.mount_blocked:
        return Plan(Blocked(reason=obs.mount_blocked), Phase.BLOCKED, tuple(notes))
    if not obs.mounted or obs.usage is None:
        return Plan(Idle(reason=f"Primary of DRBD resource {name!r}; its filesystem is not mounted on "
                                f"{spec.mount_path} (the gateway mounts it)"), Phase.ONLINE, tuple(notes))
    decision = scale_decision(spec, live, obs.usage, max_volume_gib, obs.pace)
    if decision.note:
        notes.append(decision.note)
    if isinstance(decision.action, CreateVolume):
        return Plan(decision.action, Phase.SCALING_UP, tuple(notes), Direction.UP)
    if decision.direction is Direction.DOWN:
        notes.append("a highly available drive does not shrink (a volume would have to leave both nodes' LVs in "
                     "step)")
    elif decision.action is not None:
        notes.append(f"not done in a highly available drive: {decision.action.reason} (a volume never leaves it; "
                     "raise max-bsu-count)")
    return Plan(Idle(reason=f"online, Primary of DRBD resource {name!r} ({repl.connection})"), Phase.ONLINE,
                tuple(notes))


def plan_replicated_offline(obs: DriveObs) -> Plan | None:
    """Going offline (or deleted) needs DRBD off the LV first: bsud never takes a resource down."""
    repl = obs.storage.replication
    if repl is not None and repl.up:
        return Plan(Blocked(reason=f"DRBD resource {repl.resource!r} is up on the drive's LV ({repl.role}); take it "
                                   f"down first (stop its drbd-reactor promoter, then 'drbdadm down "
                                   f"{repl.resource}')"), Phase.BLOCKED)
    return None

