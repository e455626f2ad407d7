"""A drive made from a snapshot set (``from-snapshot-set``): its volumes made from the set's snapshots, then the
copy of the other drive's filesystem they hold given this drive's identity, on the same VM as the original too.

The copy has the original's fsid and device ids and its label (``bsud-<drive>``). On a VM where the original is
mounted, the kernel refuses to register the copy's devices under that fsid (it is open), and a multi-device btrfs
cannot be told apart from its copy by ``btrfs-progs``' device scan: so the copy gets a new fsid (``btrfstune -m``:
only the superblocks are rewritten, the metadata keeps the old UUID as its ``metadata_uuid``) and the drive's
label, both run where the only block devices are the copy's (:mod:`bsud.backup.isolate`). Each step is checked
from the devices' superblocks first, so a step interrupted (kill -9) is done again or found done.

The ``lvm`` layout's copy is first a VG of the original drive's name with its PV and VG UUIDs, all of them shown
twice to LVM when the original is on this VM too: ``vgimportclone`` gives it new UUIDs and this drive's name (the
VG's name is the drive's), the VG is activated, and the btrfs on its LV gets a new fsid and the label as above.
"""

from __future__ import annotations

import os

from bsud.backup.isolate import isolated
from bsud.backup.sets import SnapshotSet, group
from bsud.cloud.base import CloudProvider, VolumeOptions
from bsud.config import DriveConfig, Layout, Provider
from bsud.errors import BsudError, CommandError
from bsud.host.lvm import Lvm
from bsud.host.safety import probe
from bsud.logs import get_logger
from bsud.naming import RESTORED_FROM_TAG, RESTORED_OF_TAG, SNAPSHOT_SIZE_TAG, label_for, lv_path, restored_from
from bsud.runner import Runner

log = get_logger("bsud.backup.restore")


class RestoreError(BsudError):
    pass


class SetGone(RestoreError):
    """No snapshot set of that id (any more)."""


def restorable_set(cloud: CloudProvider, spec: DriveConfig, set_id: str) -> SnapshotSet:
    """The set, complete and of the drive's layout; else a permanent error saying what to do."""
    chosen = [s for s in group(cloud.list_snapshots()) if s.id == set_id]
    if not chosen:
        raise SetGone(f"drive {spec.name!r}: snapshot set {set_id!r} does not exist ('bsud snapshots' lists "
                      "them); nothing made")
    found = chosen[0]
    if not found.restorable:
        raise RestoreError(f"drive {spec.name!r}: snapshot set {set_id} is incomplete ({'; '.join(found.problems)})"
                           ": an incomplete set is never restored; choose a complete one ('bsud snapshots')")
    if found.layout != spec.layout.value:
        raise RestoreError(f"drive {spec.name!r}: snapshot set {set_id} is of a drive with layout {found.layout}; "
                           f"give the drive layout {found.layout!r}")
    return found


def restore_volumes(cloud: CloudProvider, spec: DriveConfig, provider: Provider, set_id: str, timeout: float) -> bool:
    """One volume per member of the set not made yet (tagged with the drive and ``RESTORED_FROM_TAG``), with the
    drive's volume options (type, IOPS, throughput, encryption: an io1 volume needs its IOPS, and a drive asked
    encrypted gets encrypted copies); False when all were made already."""
    snap_set = restorable_set(cloud, spec, set_id)
    made = {v.tags.get(RESTORED_FROM_TAG) for v in cloud.list_volumes() if v.drive == spec.name}
    created = False
    for index, snap in sorted(snap_set.members.items()):
        tag = f"{set_id}:{index}/{snap_set.count}"
        if tag in made:
            continue
        size = int(snap.tags.get(SNAPSHOT_SIZE_TAG) or snap.size_gib)
        vol = cloud.create_volume(spec.name, size, spec.disk_type.value, VolumeOptions.for_drive(
            spec, provider, size, {RESTORED_FROM_TAG: tag, RESTORED_OF_TAG: f"{snap_set.drive}/{snap_set.fs_uuid}"},
            snapshot_id=snap.id))
        log.info("volume made from a snapshot", drive=spec.name, set=set_id, member=index, snapshot=snap.id,
                 volume=vol.id, size_gib=size)
        cloud.wait_available(vol.id, timeout=timeout)
        created = True
    return created


def adopt(cloud: CloudProvider, spec: DriveConfig, set_id: str, devices: list[str], runner: Runner,
          volume_tags: list[dict[str, str]] | None = None) -> bool:
    """The copy on ``devices`` (every volume of the drive made from the set, attached here; ``volume_tags``: their
    tags) made this drive's: a new fsid, the drive's label (lvm: first the VG renamed, new UUIDs). False when it
    already is. A set deleted since its volumes were made is read from their tags."""
    try:
        snap_set = restorable_set(cloud, spec, set_id)
    except SetGone as exc:
        snap_set = _set_of_volumes(spec, set_id, volume_tags or [])
        if snap_set is None:
            raise exc from None
    if len(devices) != snap_set.count:
        raise RestoreError(f"drive {spec.name!r}: {len(devices)} devices for the {snap_set.count} volumes of snapshot "
                           f"set {set_id}", temporary=True)
    changed = False
    fs_devices = devices
    if spec.layout is Layout.LVM:
        changed = _adopt_vg(spec, snap_set, devices, runner)
        fs_devices = [lv_path(spec.name)]
    return _adopt_btrfs(spec, snap_set, fs_devices, runner) or changed


def _set_of_volumes(spec: DriveConfig, set_id: str, volume_tags: list[dict[str, str]]) -> SnapshotSet | None:
    """The set as its volumes' tags tell it (the set itself gone): every member made, all of one set, each naming
    the set's drive and filesystem UUID; None otherwise."""
    places = [restored_from(t.get(RESTORED_FROM_TAG, "")) for t in volume_tags]
    of = {t.get(RESTORED_OF_TAG, "") for t in volume_tags}
    if not places or len(of) != 1 or any(s != set_id or p is None for s, p in places):
        return None
    drive, _, fs_uuid = next(iter(of)).partition("/")
    counts = {p[1] for _, p in places if p is not None}
    indexes = sorted(p[0] for _, p in places if p is not None)
    if not drive or not fs_uuid or len(counts) != 1 or indexes != list(range(next(iter(counts)))):
        return None
    log.warning("snapshot set gone since its volumes were made: adopting them as their tags tell", drive=spec.name,
                set=set_id, original=drive)
    return SnapshotSet(id=set_id, drive=drive, layout=spec.layout.value, fs_uuid=fs_uuid, time="",
                       count=len(indexes))


def _adopt_vg(spec: DriveConfig, snap_set: SnapshotSet, devices: list[str], runner: Runner) -> bool:
    """The copy's VG given this drive's name and new PV/VG UUIDs (``vgimportclone``), then activated."""
    lvm = Lvm(runner)
    ours = spec.name

    def vgs() -> set[str]:
        # Only these devices (--devices): with the original on this VM, LVM sees every PV twice and reports either.
        found = {os.path.realpath(pv.name): pv.vg_name for pv in lvm.pvs(devices, only=True)}
        names = {found.get(os.path.realpath(dev)) for dev in devices}
        if None in names or "" in names:
            raise RestoreError(f"drive {spec.name!r}: the devices made from snapshot set {snap_set.id} "
                               f"({', '.join(devices)}) are not all PVs of a VG: not the copy of drive "
                               f"{snap_set.drive!r}'s lvm layout; not touching them")
        return names  # type: ignore[return-value]

    changed = False
    names = vgs()
    if names != {ours}:
        if names != {snap_set.drive}:
            raise RestoreError(f"drive {spec.name!r}: the devices made from snapshot set {snap_set.id} hold VG(s) "
                               f"{', '.join(sorted(names))}, not drive {snap_set.drive!r}'s; not touching them")
        if lvm.vg(ours) is not None or os.path.lexists(f"/dev/{ours}"):
            raise RestoreError(f"drive {spec.name!r}: a VG or /dev/{ours} of that name exists on this machine "
                               "already, so the copy's VG cannot take the drive's name; rename the drive")
        try:
            lvm.vgimportclone(ours, devices, import_devices=lvm.devices_file_enabled())
        except CommandError as exc:
            raise RestoreError(f"drive {spec.name!r}: vgimportclone of the copy from snapshot set {snap_set.id} "
                               f"failed: {exc}") from None
        if vgs() != {ours}:
            raise RestoreError(f"drive {spec.name!r}: after vgimportclone the copy's VG is not named {ours!r}")
        log.info("the copy's VG renamed after the drive, new UUIDs", drive=spec.name, set=snap_set.id,
                 original=snap_set.drive)
        changed = True
    lv = lvm.lv(ours)
    if lv is None:
        raise RestoreError(f"drive {spec.name!r}: the copy's VG has no LV; not the copy of a bsud drive")
    if not lv.active:
        lvm.vgchange(ours, True)
        changed = True
    return changed


def _adopt_btrfs(spec: DriveConfig, snap_set: SnapshotSet, devices: list[str], runner: Runner) -> bool:
    """The btrfs on ``devices`` (the volumes' devices, or the LV) given a new fsid and the drive's label."""
    set_id = snap_set.id
    theirs, ours = label_for(snap_set.drive), label_for(spec.name)
    # A drive of the original bsud (lvm) has no label: its copy is known by the set's fsid.
    known = (theirs, ours, "") if spec.layout is Layout.LVM else (theirs, ours)

    def identities() -> dict[str, dict[str, str]]:
        found = {dev: probe(runner, dev).blkid for dev in devices}
        for dev, seen in found.items():
            if seen.get("TYPE") != "btrfs" or seen.get("LABEL", "") not in known:
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
    node = os.path.realpath(devices[0])  # the isolated /dev has the device nodes, not their links (/dev/<vg>/…)
    try:
        if first.get("UUID") == snap_set.fs_uuid:
            isolated(runner, devices, [["btrfstune", "-m", node]])
            changed = True
        if first.get("LABEL") != ours:
            isolated(runner, devices, [["btrfs", "filesystem", "label", node, ours]])
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
