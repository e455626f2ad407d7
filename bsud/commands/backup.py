"""``bsud snapshot``, ``bsud snapshots`` and ``bsud delete-snapshot-set``: snapshot sets of a drive
(bsud.backup)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from bsud.commands.common import EXIT_ERROR, EXIT_OK, say
from bsud.config import Config
from bsud.errors import BsudError
from bsud.lock import snapshot_lock

if TYPE_CHECKING:
    from bsud.cloud.base import CloudProvider


def cmd_snapshot(config: Config, drive: str, keep: int | None = None) -> int:
    from bsud.cloud import make_provider

    if keep is not None and keep < 1:
        say(f"bsud: snapshot: --keep {keep}: keep at least the set just taken (1 or more)")
        return EXIT_ERROR
    cloud = make_provider(config)
    try:
        with snapshot_lock(config.daemon.status_file, drive):
            return _snapshot(config, drive, keep, cloud)
    except BsudError as exc:
        say(f"bsud: snapshot: {exc}")
        return EXIT_ERROR


def _snapshot(config: Config, drive: str, keep: int | None, cloud: CloudProvider) -> int:
    from bsud.backup.take import prune, take_set

    taken = take_set(config, drive, cloud)  # a BsudError: said by the caller
    s = taken.set
    frozen = f"frozen {taken.freeze_seconds:.2f} s" if taken.freeze_seconds is not None else "not mounted: not frozen"
    print(f"{s.id}: drive {s.drive}, {len(s.members)} volumes "
          f"({', '.join(f'{m.volume_id} → {m.id}' for m in s.snapshots())}), {frozen}, {taken.seconds:.2f} s in all, "
          f"{s.state}")
    if keep is not None:
        try:
            gone = prune(cloud, s, keep)
        except BsudError as exc:
            say(f"bsud: snapshot: set {s.id} taken, but deleting the older sets (--keep {keep}) failed: {exc}")
            return EXIT_ERROR
        for set_id in gone:
            print(f"{set_id}: deleted (--keep {keep})")
    return EXIT_OK


def cmd_snapshots(config: Config, drive: str | None, as_json: bool) -> int:
    from bsud.backup.sets import group
    from bsud.cloud import make_provider

    sets = [s for s in group(make_provider(config).list_snapshots()) if drive is None or s.drive == drive]
    if as_json:
        json.dump([{"id": s.id, "drive": s.drive, "time": s.time, "layout": s.layout, "fs_uuid": s.fs_uuid,
                    "volumes": s.count, "size_gib": s.size_gib, "state": s.state, "restorable": s.restorable,
                    "problems": list(s.problems),
                    "snapshots": [{"id": m.id, "volume": m.volume_id, "state": m.state, "progress": m.progress}
                                  for m in s.snapshots()]} for s in sets], sys.stdout, indent=2)
        print()
        return EXIT_OK
    for s in sets:
        print(s.describe())
    if not sets:
        say(f"bsud: snapshots: no snapshot set{' of drive ' + repr(drive) if drive else ''}", 6)
    return EXIT_OK


def cmd_delete_snapshot_set(config: Config, set_ids: list[str], yes: bool) -> int:
    from bsud.backup.take import delete_set
    from bsud.cloud import make_provider

    if not yes:
        if not sys.stdin.isatty():
            say("bsud: delete-snapshot-set: this deletes backups; refusing without --yes (stdin is not a terminal "
                "to ask on)")
            return EXIT_ERROR
        try:
            answer = input(f"Delete snapshot set{'s' if len(set_ids) > 1 else ''} {' '.join(set_ids)}? Type yes: ")
        except EOFError:  # Ctrl-D: no answer
            answer = ""
        if answer.strip() != "yes":
            say("bsud: delete-snapshot-set: not confirmed; nothing deleted", 6)
            return EXIT_ERROR
    cloud = make_provider(config)
    failed = False
    for set_id in set_ids:
        try:
            ids = delete_set(cloud, set_id)
        except BsudError as exc:
            say(f"bsud: delete-snapshot-set: {exc}")
            failed = True
            continue
        say(f"bsud: delete-snapshot-set: {set_id}: deleted {', '.join(ids)}", 6)
    return EXIT_ERROR if failed else EXIT_OK
