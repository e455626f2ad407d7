"""The contract with the cloud and the host that the original bsud defined, plus units and volume states.

Tag keys, the LV name and the btrfs label are how a drive is found again (by this bsud after a restart, and in
drives the original made), so they never change. Pure constants and the names derived from them: every layer may
import this module.
"""

from __future__ import annotations

import re

GIB = 1024**3
MIB = 1024**2

#: The tag naming a volume's drive.
DRIVE_TAG = "osc.bsud.drive-name"
#: bsud's bookkeeping on a volume being taken out of its drive: "removing" while data may
#: still be on it, "evacuated" once it is verifiably out (safe to detach and delete).
STATE_TAG = "osc.bsud.state"
REMOVING, EVACUATED = "removing", "evacuated"
#: …and on a volume bsud has just created, until it is first attached: "new" says it was never attached, so holds
#: nothing (it is deleted, unseen, when the VM can take no more volumes; the mark is dropped once attached).
NEW = "new"
#: The tags of a snapshot set (``bsud snapshot``): one snapshot per member volume of a drive, taken while its
#: filesystem was frozen. The set's id, its drive, the member's place ("0/2"), the layout, the source volume and its
#: size, the filesystem's UUID and the time of the freeze; "incomplete" with why, once the set is known to be so.
SNAPSHOT_SET_TAG = "osc.bsud.snapshot-set"
SNAPSHOT_DRIVE_TAG = "osc.bsud.snapshot-drive"
SNAPSHOT_MEMBER_TAG = "osc.bsud.snapshot-member"
SNAPSHOT_LAYOUT_TAG = "osc.bsud.snapshot-layout"
SNAPSHOT_SOURCE_TAG = "osc.bsud.snapshot-source"
SNAPSHOT_SIZE_TAG = "osc.bsud.snapshot-volume-gib"
SNAPSHOT_FS_TAG = "osc.bsud.snapshot-fs-uuid"
SNAPSHOT_TIME_TAG = "osc.bsud.snapshot-time"
SNAPSHOT_INCOMPLETE_TAG = "osc.bsud.snapshot-incomplete"
#: Put on every snapshot of a set, in one call, once ``bsud snapshot`` has thawed and checked the drive: a set
#: without it was never confirmed (the command killed before its end) and is incomplete.
SNAPSHOT_CONFIRMED_TAG = "osc.bsud.snapshot-confirmed"
#: On a volume made from a snapshot set for a drive (``from-snapshot-set``): "<set>:<member>/<members>".
RESTORED_FROM_TAG = "osc.bsud.restored-from"
#: Beside it: the set's drive and its filesystem's UUID, "<drive>/<uuid>" — what the adoption needs, should the set
#: be deleted once its volumes are made (a --keep of the original drive, an operator's delete-snapshot-set).
RESTORED_OF_TAG = "osc.bsud.restored-of"


def member_place(text: str | None) -> tuple[int, int] | None:
    """``"<i>/<n>"`` (a snapshot's member tag; the end of a ``RESTORED_FROM_TAG`` value) → ``(i, n)``; None when
    it is not that."""
    try:
        index, count = (int(x) for x in (text or "").split("/"))
    except ValueError:
        return None
    return (index, count) if 0 <= index < count else None


def restored_from(tag: str) -> tuple[str, tuple[int, int] | None]:
    """A ``RESTORED_FROM_TAG`` value → the set's id and the member's place in it (see :func:`member_place`)."""
    set_id, _, place = tag.rpartition(":")
    return set_id, member_place(place)


#: States of a snapshot (EC2 vocabulary).
PENDING, COMPLETED = "pending", "completed"
#: The one LV of a drive's VG (the VG is named after the drive).
LV_NAME = "bsud"
#: The names volumes are attached under: a prefix, one or two letters — what tells attachments apart (Outscale's
#: SCSI serial of /dev/xvdc is sdc) — and a partition's digits when it is one.
DEVICE_NAME_RE = re.compile(r"^/dev/(xvd|sd|vd|hd)([a-z]{1,2})(\d*)$")

#: States a volume can be in (EC2 vocabulary).
CREATING, AVAILABLE, IN_USE, DELETING, DELETED, ERROR = (
    "creating", "available", "in-use", "deleting", "deleted", "error",
)

#: The largest volume when the cloud's catalogue does not say (Outscale's limit, GiB).
DEFAULT_MAX_VOLUME_GIB = 14901


def label_for(drive: str) -> str:
    """The btrfs label of a drive's filesystem."""
    return f"bsud-{drive}"


def lv_path(vg: str) -> str:
    """A drive's LV as LVM links it: ``/dev/<vg>/bsud``."""
    return f"/dev/{vg}/{LV_NAME}"


def lv_mapper_path(vg: str) -> str:
    """The same LV under its device-mapper name, as the mount table shows it: ``/dev/mapper/my--vg-bsud``."""
    return f"/dev/mapper/{vg.replace('-', '--')}-{LV_NAME}"


def device_suffix(name: str, prefixes: tuple[str, ...] = ("xvd", "sd", "vd", "hd"), partitions: bool = True
                  ) -> str | None:
    """``/dev/xvdc`` → ``c``, ``/dev/sda1`` → ``a`` (with ``partitions``); None for names that are not such disk
    names, or whose prefix is not one of ``prefixes``."""
    found = DEVICE_NAME_RE.match(name)
    if found is None or found.group(1) not in prefixes or (found.group(3) and not partitions):
        return None
    return found.group(2)
