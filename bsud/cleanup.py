"""Development cleanup: take drives down and delete their volumes (scripts/delete-drive).

Uses bsud's own engine with the target forced to ``delete`` — unmount, deactivate, detach,
delete — so it works for every provider and layout, and refuses what the engine refuses
(a volume attached to another VM is left alone).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bsud.cloud import make_provider
from bsud.config import DEFAULT_CONFIG_PATH, DriveConfig, InvalidConfig, Layout, Target, load_config
from bsud.errors import BsudError
from bsud.host import mounts
from bsud.host.lvm import Lvm
from bsud.host.safety import probe
from bsud.naming import label_for
from bsud.logs import configure_logging, register_secrets
from bsud.reconcile.engine import DriveReconciler
from bsud.reconcile.observe import CloudSnapshot
from bsud.runner import Runner


def _guess_spec(name: str, runner: Runner) -> DriveConfig:
    """A spec for a drive the config does not name: its layout and mount path read from the host."""
    layout = Layout.LVM if Lvm(runner).vg(name) is not None else Layout.BTRFS
    mount_path = f"/nonexistent/bsud-{name}"
    lv_source = f"/dev/mapper/{name.replace('-', '--')}-bsud"
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="delete-drive", description="Unmount, deactivate, detach and delete "
                                     "the volumes of bsud drives (development cleanup).")
    parser.add_argument("names", nargs="*", metavar="NAME", help="drive names")
    parser.add_argument("--all", action="store_true", help="every drive whose volumes carry the bsud tag")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG_PATH, help="config file (cloud settings)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if not args.names and not args.all:
        parser.error("name a drive or pass --all")
    configure_logging(args.log_level)
    try:
        config = load_config(args.config)
    except InvalidConfig as exc:
        for problem in exc.problems:
            print(f"delete-drive: config error: {problem}", file=sys.stderr)
        return 2
    register_secrets(config.secrets())
    runner = Runner()
    try:
        cloud = make_provider(config)
        snapshot = CloudSnapshot(cloud, max_age=0)
        names = sorted(set(args.names) | (set(snapshot.by_drive()) if args.all else set()))
        configured = {d.name: d for d in config.drives}
        failed = 0
        for name in names:
            spec = configured.get(name)
            spec = spec.model_copy(update={"target": Target.DELETE}) if spec else _guess_spec(name, runner)
            result = DriveReconciler(spec, cloud, snapshot, config.cloud.provider, runner,
                                     nfs=config.nfs).run_until_settled()
            if result.phase == "deleted":
                print(f"delete-drive: {name}: deleted")
            else:
                failed += 1
                print(f"delete-drive: {name}: {result.phase}: {result.action.reason}", file=sys.stderr)
        return 1 if failed else 0
    except BsudError as exc:
        print(f"delete-drive: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
