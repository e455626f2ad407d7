"""``bsud delete-drive``: take drives down and delete their volumes.

Uses bsud's own engine with the target forced to ``delete`` — unmount, deactivate, detach,
delete — so it works for every provider and layout, and refuses what the engine refuses
(a volume attached to another VM is left alone). A drive the config does not name is taken
down with its layout and mount path read from the host.
"""

from __future__ import annotations

from collections.abc import Callable

from bsud.cloud import make_provider
from bsud.config import Config, DriveConfig, Layout, Target
from bsud.errors import BsudError
from bsud.host import mounts
from bsud.host.lvm import Lvm
from bsud.host.safety import probe
from bsud.naming import label_for, lv_mapper_path
from bsud.reconcile.engine import DriveReconciler
from bsud.reconcile.model import Phase
from bsud.reconcile.observe import CloudSnapshot
from bsud.runner import Runner


def _guess_spec(name: str, runner: Runner) -> DriveConfig:
    """A spec for a drive the config does not name: its layout and mount path read from the host."""
    layout = Layout.LVM if Lvm(runner).vg(name) is not None else Layout.BTRFS
    mount_path = f"/nonexistent/bsud-{name}"
    lv_source = lv_mapper_path(name)
    for entry in mounts.read_mounts():
        if entry.fstype != "btrfs":
            continue
        if entry.source == lv_source:
            mount_path = entry.mount_point
            break
        try:
            if probe(runner, entry.source).blkid.get("LABEL") == label_for(name):
                mount_path = entry.mount_point
                break
        except BsudError:
            continue
    return DriveConfig(name=name, target=Target.DELETE, mount_path=mount_path, layout=layout)


def doomed(config: Config, names: list[str], every: bool) -> dict[str, list[str]]:
    """What would be deleted: each drive and its volumes (``vol-… (N GiB)``)."""
    by_drive = CloudSnapshot(make_provider(config), max_age=0).by_drive()
    chosen = sorted(set(names) | (set(by_drive) if every else set()))
    return {name: [f"{v.id} ({v.size_gib} GiB)" for v in by_drive.get(name, [])] for name in chosen}


def delete_drives(config: Config, names: list[str], every: bool, report: Callable[[str, int], None]) -> int:
    """Delete each drive (``every``: each drive whose volumes carry the tag); 0 when all are gone, else 1."""
    runner = Runner()
    try:
        cloud = make_provider(config)
        snapshot = CloudSnapshot(cloud, max_age=0)
        chosen = sorted(set(names) | (set(snapshot.by_drive()) if every else set()))
        configured = {d.name: d for d in config.drives}
        failed = 0
        for name in chosen:
            spec = configured.get(name)
            spec = spec.model_copy(update={"target": Target.DELETE}) if spec else _guess_spec(name, runner)
            result = DriveReconciler(spec, cloud, snapshot, config.cloud.provider, runner,
                                     nfs=config.nfs).run_until_settled()
            if result.phase is Phase.DELETED:
                report(f"bsud: delete-drive: {name}: deleted", 6)
            else:
                failed += 1
                report(f"bsud: delete-drive: {name}: {result.phase}: {result.action.reason}", 3)
        return 1 if failed else 0
    except BsudError as exc:
        report(f"bsud: delete-drive: error: {exc}", 3)
        return 1
