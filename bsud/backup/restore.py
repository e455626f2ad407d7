"""A drive made from a snapshot set (``from-snapshot-set``): its volumes made from the set's snapshots, then the
copy of the other drive's filesystem they hold given this drive's identity, on the same VM as the original too.

The copy has the original's fsid and device ids and its label (``bsud-<drive>``). On a VM where the original is
mounted, the kernel refuses to register the copy's devices under that fsid (it is open), and a multi-device btrfs
cannot be told apart from its copy by ``btrfs-progs``' device scan: so the copy gets a new fsid (``btrfstune -m``:
only the superblocks are rewritten, the metadata keeps the old UUID as its ``metadata_uuid``) and the drive's
label, both run where the only block devices are the copy's (:mod:`bsud.backup.isolate`). Each step is checked
from the devices' superblocks first, so a step interrupted (kill -9) is done again or found done.
"""

from __future__ import annotations

from bsud.backup.isolate import isolated
from bsud.backup.sets import SnapshotSet, group
from bsud.cloud.base import CloudProvider, VolumeOptions
from bsud.config import DriveConfig
from bsud.errors import BsudError, CommandError
from bsud.host.safety import probe
from bsud.logs import get_logger
from bsud.naming import RESTORED_FROM_TAG, SNAPSHOT_SIZE_TAG, label_for
from bsud.runner import Runner

log = get_logger("bsud.backup.restore")


class RestoreError(BsudError):
    pass


def restorable_set(cloud: CloudProvider, spec: DriveConfig, set_id: str) -> SnapshotSet:
    """The set, complete and of the drive's layout; else a permanent error saying what to do."""
    chosen = [s for s in group(cloud.list_snapshots()) if s.id == set_id]
    if not chosen:
        raise RestoreError(f"drive {spec.name!r}: snapshot set {set_id!r} does not exist ('bsud snapshots' lists "
                           "them); nothing made")
    found = chosen[0]
    if not found.restorable:
        raise RestoreError(f"drive {spec.name!r}: snapshot set {set_id} is incomplete ({'; '.join(found.problems)})"
                           ": an incomplete set is never restored; choose a complete one ('bsud snapshots')")
    if found.layout != spec.layout.value:
        raise RestoreError(f"drive {spec.name!r}: snapshot set {set_id} is of a drive with layout {found.layout}; "
                           f"give the drive layout {found.layout!r}")
    return found


def restore_volumes(cloud: CloudProvider, spec: DriveConfig, set_id: str, timeout: float) -> bool:
    """One volume per member of the set not made yet (tagged with the drive and ``RESTORED_FROM_TAG``); False when
    all were made already."""
    snap_set = restorable_set(cloud, spec, set_id)
    made = {v.tags.get(RESTORED_FROM_TAG) for v in cloud.list_volumes() if v.drive == spec.name}
    created = False
    for index, snap in sorted(snap_set.members.items()):
        tag = f"{set_id}:{index}/{snap_set.count}"
        if tag in made:
            continue
        size = int(snap.tags.get(SNAPSHOT_SIZE_TAG) or snap.size_gib)
        vol = cloud.create_volume(spec.name, size, spec.disk_type.value, VolumeOptions(
            tags={**(spec.tags or {}), RESTORED_FROM_TAG: tag}, snapshot_id=snap.id))
        log.info("volume made from a snapshot", drive=spec.name, set=set_id, member=index, snapshot=snap.id,
                 volume=vol.id, size_gib=size)
        cloud.wait_available(vol.id, timeout=timeout)
        created = True
    return created


def adopt(cloud: CloudProvider, spec: DriveConfig, set_id: str, devices: list[str], runner: Runner) -> bool:
    """The copy on ``devices`` (every volume of the drive made from the set, attached here) made this drive's: a
    new fsid, the drive's label. False when it already is."""
    snap_set = restorable_set(cloud, spec, set_id)
    if len(devices) != snap_set.count:
        raise RestoreError(f"drive {spec.name!r}: {len(devices)} devices for the {snap_set.count} volumes of snapshot "
                           f"set {set_id}", temporary=True)
    theirs, ours = label_for(snap_set.drive), label_for(spec.name)

    def identities() -> dict[str, dict[str, str]]:
        found = {dev: probe(runner, dev).blkid for dev in devices}
        for dev, seen in found.items():
            if seen.get("TYPE") != "btrfs" or seen.get("LABEL") not in (theirs, ours):
                raise RestoreError(f"drive {spec.name!r}: {dev} (made from snapshot set {set_id}) holds "
                                   f"{seen.get('TYPE') or 'nothing known'} labelled {seen.get('LABEL')!r}, not the "
                                   f"copy of drive {snap_set.drive!r}'s btrfs; not touching it")
        if len({seen.get("UUID") for seen in found.values()}) != 1:
            raise RestoreError(f"drive {spec.name!r}: the devices made from snapshot set {set_id} disagree on their "
                               "filesystem's UUID; not touching them")
        return found

    seen = identities()
    first = next(iter(seen.values()))
    changed = False
    try:
        if first.get("UUID") == snap_set.fs_uuid:
            isolated(runner, devices, [["btrfstune", "-m", devices[0]]])
            changed = True
        if first.get("LABEL") != ours:
            isolated(runner, devices, [["btrfs", "filesystem", "label", devices[0], ours]])
            changed = True
    except CommandError as exc:
        raise RestoreError(f"drive {spec.name!r}: giving the copy from snapshot set {set_id} a new identity failed: "
                           f"{exc}") from None
    if not changed:
        return False
    for dev in devices:  # the kernel's list still has them under the original's fsid (scanned when attached)
        runner.run(["btrfs", "device", "scan", "--forget", dev], check=False, ok_codes=range(256), quiet=True,
                   timeout=60)
    after = identities()
    fsid = next(iter(after.values())).get("UUID")
    if fsid == snap_set.fs_uuid or any(s.get("LABEL") != ours for s in after.values()):
        raise RestoreError(f"drive {spec.name!r}: the copy from snapshot set {set_id} still shows the original's "
                           "identity after btrfstune")
    log.info("copy from a snapshot set made the drive's own", drive=spec.name, set=set_id, original=snap_set.drive,
             fsid=fsid, label=ours)
    return True
