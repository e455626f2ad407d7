"""``bsud snapshot DRIVE``: a crash-consistent snapshot set of a drive of several volumes.

1. The drive as bsud sees it (cloud tags and host, one observation): it must be whole; its member volumes, in
   order, are the set's members. A drive left frozen by an earlier run is thawed first.
2. Freeze the mounted filesystem (btrfs commits: every device holds one consistent state), start one snapshot per
   member, all at once — the cloud fixes each one's content at the call — check from the host that the drive still
   has exactly those members (a grow or a removal of the daemon's in between would make the set a different drive),
   thaw.
   An unmounted drive is not frozen (nothing writes to it).
3. A call that failed, or members that changed: the snapshots made are marked incomplete (with why) and the command
   fails; such a set is listed as incomplete and never restored. Else the set is confirmed: one tag on all its
   snapshots, in one call. A set never confirmed (the command killed after starting the snapshots) is incomplete
   too: nothing says its members were still the drive's.

Timing is measured: the freeze (from FIFREEZE to FITHAW) and the whole set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from bsud.backup.freeze import frozen, thaw_if_frozen
from bsud.backup.sets import SnapshotSet, group, member_tags, new_set_id, superseded
from bsud.cloud.base import CloudProvider, Snapshot
from bsud.config import Config, DriveConfig, Layout
from bsud.errors import BsudError
from bsud.host.safety import probe
from bsud.logs import get_logger
from bsud.naming import SNAPSHOT_CONFIRMED_TAG, SNAPSHOT_INCOMPLETE_TAG, SNAPSHOT_SET_TAG, lv_path
from bsud.reconcile.engine import DriveReconciler
from bsud.reconcile.model import VolumeObs
from bsud.reconcile.observe import CloudSnapshot
from bsud.runner import Runner

log = get_logger("bsud.backup")


#: CreateSnapshot calls in flight at once.
MAX_PARALLEL = 16


class BackupError(BsudError):
    pass


@dataclass(frozen=True)
class Taken:
    set: SnapshotSet
    freeze_seconds: float | None     # None: the drive was not mounted (not frozen)
    seconds: float                   # the whole command, observation included


def take_set(config: Config, drive: str, cloud: CloudProvider, runner: Runner | None = None) -> Taken:
    started = time.monotonic()
    try:
        spec = config.drive(drive)
    except KeyError:
        raise BackupError(f"{config.path} names no drive {drive!r}") from None
    if spec.ha is not None:
        raise BackupError(f"drive {drive!r} is highly available: its volumes hold DRBD's meta-data and the Primary's "
                          "filesystem is on the DRBD device — snapshot sets of ha drives are not supported (back up "
                          "the filesystem on the Primary instead)")
    rec = DriveReconciler(spec, cloud, CloudSnapshot(cloud, max_age=0), config.cloud.provider, runner,
                          nfs=config.nfs)
    obs, _ = rec.observe()
    if obs.storage.missing:
        raise BackupError(f"drive {drive!r} is not whole ({obs.storage.missing}); no snapshot set of it now")
    members = [v for v in obs.volumes if v.member and v.device]
    if not members:
        raise BackupError(f"drive {drive!r} has no volume in use on this VM to snapshot (is it online?)")
    if obs.storage.move_in_progress:
        # A pvmove copies extents under the filesystem, which a freeze does not hold: the snapshots of its source and
        # its destination could disagree on where the LV's data is.
        raise BackupError(f"drive {drive!r}: a pvmove of its data is in progress (a volume being removed); no "
                          "snapshot set of it until it ends")
    removing = [v.id for v in members if v.bookkeeping]
    if removing:
        log.info("a volume of the drive is being removed; it is in the set all the same (part of the filesystem "
                 "until its removal ends)", drive=drive, volumes=removing)
    if obs.mounted:
        thaw_if_frozen(spec.mount_path, drive)
    fs_uuid = _fs_uuid(spec, rec, obs.mounted, [v.device for v in members if v.device], rec.layout.runner)
    when = datetime.now(timezone.utc)
    set_id = new_set_id(drive, when)
    extra = {**config.cloud.tags, **(spec.tags or {})}
    made: list[Snapshot] = []
    freeze_seconds: float | None = None
    changed: str | None = None
    paths = [v.device for v in members if v.device]
    try:
        with frozen(spec.mount_path) if obs.mounted else contextlib.nullcontext(time.monotonic()) as began:
            start_snapshots(cloud, members, made, lambda index, vol: member_tags(
                set_id, drive, index, len(members), spec.layout.value, vol.id, vol.size_gib, fs_uuid,
                when, extra), f"bsud snapshot set {set_id}: drive {drive}")
            now = rec.layout.observe(paths)
            if now.missing or set(now.members) != set(paths) or now.move_in_progress:
                seen = now.missing or ("a pvmove started" if now.move_in_progress else
                                       f"members now: {', '.join(sorted(now.members))}")
                changed = (f"the drive's volumes changed while it was frozen ({seen}): a grow or a removal of "
                           "bsud's daemon; take another set")
            if obs.mounted:
                freeze_seconds = time.monotonic() - began
    except BsudError as exc:
        _mark(cloud, made, f"not every volume was snapshotted: {exc}")
        raise BackupError(f"snapshot set {set_id} of drive {drive!r} is incomplete ({len(made)} of {len(members)} "
                          f"snapshots): {exc}") from None
    if changed:
        _mark(cloud, made, changed)
        raise BackupError(f"snapshot set {set_id} of drive {drive!r} is incomplete: {changed}")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        cloud.tag_snapshots([s.id for s in made], SNAPSHOT_CONFIRMED_TAG, stamp)
    except BsudError as exc:
        raise BackupError(f"snapshot set {set_id} of drive {drive!r} was taken, but confirming it failed ({exc}): "
                          "it is listed as incomplete; take another") from None
    made = [dataclasses.replace(s, tags={**s.tags, SNAPSHOT_CONFIRMED_TAG: stamp}) for s in made]
    (taken,) = group(made)
    log.info("snapshot set taken", drive=drive, set=set_id, volumes=len(made), freeze_seconds=freeze_seconds,
             seconds=round(time.monotonic() - started, 3))
    return Taken(taken, freeze_seconds, time.monotonic() - started)


def _fs_uuid(spec: DriveConfig, rec: DriveReconciler, mounted: bool, devices: list[str], runner: Runner) -> str:
    """The UUID of the drive's btrfs, which a restore beside the original must change (two filesystems of one UUID
    on a VM are one to the kernel): from the mount, else from the superblock of its first device (the LV)."""
    uuid = ""
    if mounted:
        found = rec.layout.fs.show(spec.mount_path)
        uuid = found.uuid if found is not None else ""
    else:
        device = lv_path(spec.name) if spec.layout is Layout.LVM else (devices[0] if devices else "")
        try:
            seen = probe(runner, device).blkid if device else {}
        except BsudError:
            seen = {}
        uuid = seen.get("UUID", "") if seen.get("TYPE") == "btrfs" else ""
    if not uuid:
        raise BackupError(f"drive {spec.name!r}: its filesystem's UUID cannot be read "
                          f"({'mounted' if mounted else 'not mounted'}); a set without it could not be restored "
                          "beside the drive. Bring the drive online and take the set again")
    return uuid


def start_snapshots(cloud: CloudProvider, members: list[VolumeObs], made: list[Snapshot],
                    tags: Callable[[int, VolumeObs], dict[str, str]], description: str) -> None:
    """One CreateSnapshot per member, all at once (the freeze lasts as long as the slowest call, not their sum;
    the daemon's API rate limit still spaces them). Each snapshot made is appended to ``made``, in member order;
    the first failure is raised once every call has ended."""
    def one(index: int, vol: VolumeObs) -> Snapshot:
        return cloud.create_snapshot(vol.id, f"{description}, volume {index + 1} of {len(members)}",
                                     tags(index, vol))

    with ThreadPoolExecutor(max_workers=min(len(members), MAX_PARALLEL), thread_name_prefix="snapshot") as pool:
        futures = [pool.submit(one, index, vol) for index, vol in enumerate(members)]
    failure: BaseException | None = None
    for future in futures:
        error = future.exception()
        if error is None:
            made.append(future.result())
        elif failure is None:
            failure = error
    if failure is not None:
        raise failure


def _mark(cloud: CloudProvider, made: list[Snapshot], why: str) -> None:
    """Mark the snapshots made of an incomplete set, in one call (a failure here leaves the set recognisable as
    incomplete all the same: it is never confirmed)."""
    if not made:
        return
    try:
        cloud.tag_snapshots([snap.id for snap in made], SNAPSHOT_INCOMPLETE_TAG, why[:255])
    except BsudError as exc:
        log.warning("could not mark the snapshots of an incomplete set", snapshots=[s.id for s in made],
                    error=str(exc))


def prune(cloud: CloudProvider, taken: SnapshotSet, keep: int) -> list[str]:
    """The drive's sets ``--keep`` lets go deleted (:func:`~bsud.backup.sets.superseded`); their ids."""
    gone = []
    for old in superseded(group(cloud.list_snapshots()), taken.drive, keep, taken):
        for snap in old.snapshots():
            cloud.delete_snapshot(snap.id)
        log.info("snapshot set deleted (--keep)", drive=taken.drive, set=old.id, state=old.state, keep=keep)
        gone.append(old.id)
    return gone


def delete_set(cloud: CloudProvider, set_id: str) -> list[str]:
    """Delete every snapshot of a set; the ids deleted. Unknown set: an error naming it."""
    ids = [s.id for s in cloud.list_snapshots() if s.tags.get(SNAPSHOT_SET_TAG) == set_id]
    if not ids:
        raise BackupError(f"no snapshot set {set_id!r} (see 'bsud snapshots')")
    for snap_id in ids:
        cloud.delete_snapshot(snap_id)
    return ids
