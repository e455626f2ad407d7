"""Command line: ``bsud [-c PATH] [--log-level L] [COMMAND]``.

Every failure the user can fix ends as one line per problem on stderr and a non-zero
exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from bsud import __version__
from bsud.config import DEFAULT_CONFIG_PATH, Config, EnvSettings, InvalidConfig, load_config
from bsud.commands.backup import cmd_delete_snapshot_set, cmd_snapshot, cmd_snapshots
from bsud.commands.common import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, EXIT_PIPE, daemon_status, say
from bsud.commands.service import WAIT_ONLINE_SECONDS, cmd_reload, cmd_wait_online
from bsud.errors import BsudError
from bsud.logs import LEVELS, configure_logging, get_logger, register_secrets


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"config file (default: {DEFAULT_CONFIG_PATH})")
    common.add_argument("--log-level", choices=LEVELS, default=argparse.SUPPRESS,
                        help="log level (default: $BSUD_LOG or info)")
    parser = argparse.ArgumentParser(
        prog="bsud",
        parents=[common],
        description="Keeps each configured drive — one filesystem made of several cloud block volumes — "
                    "online, offline or deleted as the config says, growing and shrinking it with its data.",
    )
    parser.add_argument("--version", action="version", version=f"bsud {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground (the default)")
    status = sub.add_parser("status", parents=[common],
                            help="each drive's state, from the running daemon or by observing")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--exports", action="store_true",
                        help="also each export's I/O counters (servers that keep them: nfs-ganesha)")
    sub.add_parser("plan", parents=[common], help="what the next step of each drive would be; changes nothing")
    ha = sub.add_parser("ha-config", parents=[common],
                        help="the drbd-reactor promoter file of each drive with an ha section (checked against "
                             "the OCF agents' meta-data); --write puts it in place and reloads drbd-reactor")
    ha.add_argument("--write", action="store_true", help="write <promoter-dir>/bsud-<drive>.toml (atomically)")
    sub.add_parser("check-config", parents=[common],
                   help="validate the config and print it with defaults filled and secrets masked")
    wait = sub.add_parser("wait-online", parents=[common],
                          help="wait until the named drives (default: every drive whose target is online) are "
                               "mounted by the running daemon; exit 1 at the timeout (bsud-wait-online@.service)")
    wait.add_argument("drives", nargs="*", metavar="DRIVE", help="drive names from the config")
    wait.add_argument("--timeout", type=float, default=WAIT_ONLINE_SECONDS, metavar="SECONDS",
                      help=f"give up after this long (default {WAIT_ONLINE_SECONDS:.0f})")
    reload = sub.add_parser("reload", parents=[common],
                            help="check the config, then have the running daemon reload it (SIGHUP) and wait for "
                                 "its answer; exit 2 when the config is refused (the unit's ExecReload)")
    reload.add_argument("--pid", type=int, help="the daemon's pid (default: from its status file)")
    delete = sub.add_parser("delete-drive", parents=[common],
                            help="take drives down and DELETE their volumes: unmount, deactivate, detach, delete "
                                 "(asks for the drive names unless --yes)")
    delete.add_argument("drives", nargs="*", metavar="DRIVE", help="drive names (need not be in the config)")
    delete.add_argument("--all", action="store_true", help="every drive whose volumes carry bsud's tag")
    delete.add_argument("--yes", action="store_true", help="do not ask; delete")
    snap = sub.add_parser("snapshot", parents=[common],
                          help="a snapshot set of a drive: its filesystem frozen, one snapshot per volume, thawed")
    snap.add_argument("drive", metavar="DRIVE", help="a drive of the config")
    snap.add_argument("--keep", type=int, metavar="N",
                      help="then delete the drive's older sets but the newest N (this one included), and its "
                           "incomplete sets older than this one")
    snaps = sub.add_parser("snapshots", parents=[common],
                           help="the snapshot sets (of DRIVE) with their state: completed, pending, incomplete")
    snaps.add_argument("drive", nargs="?", metavar="DRIVE", help="only this drive's sets")
    snaps.add_argument("--json", action="store_true", help="machine-readable output")
    dels = sub.add_parser("delete-snapshot-set", parents=[common],
                          help="delete every snapshot of the named sets (asks unless --yes)")
    dels.add_argument("sets", nargs="+", metavar="SET", help="set ids as 'bsud snapshots' lists them")
    dels.add_argument("--yes", action="store_true", help="do not ask; delete")
    return parser


def _load(path: str) -> Config:
    config = load_config(path)
    register_secrets(config.secrets())
    log = get_logger("bsud")
    for warning in config.warnings:
        log.warning(warning)
    return config


def cmd_check_config(config: Config) -> int:
    json.dump(config.effective(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def _observed_status(config: Config) -> dict:
    from bsud.cloud import make_provider
    from bsud.reconcile.engine import DriveReconciler
    from bsud.reconcile.observe import CloudSnapshot, unmanaged_drives

    cloud = make_provider(config)
    snapshot = CloudSnapshot(cloud)
    drives = {}
    for spec in config.drives:
        rec = DriveReconciler(spec, cloud, snapshot, config.cloud.provider, nfs=config.nfs)
        obs, plan = rec.plan_now()
        rec.status.record(obs, plan)
        drives[spec.name] = rec.status.as_dict()
    unmanaged = unmanaged_drives(snapshot.by_drive(), {d.name for d in config.drives}, cloud.identity().instance_id)
    return {"pid": None, "drives": drives, "unmanaged": unmanaged}


def describe_event(event: dict) -> str:
    """``scale-up done 3 min ago: vol-0a1 (12 GiB) in 21 s, drive 22 GiB``."""
    ago = max(0.0, time.time() - float(event.get("time", time.time())))
    when = f"{ago:.0f} s ago" if ago < 120 else f"{ago / 60:.0f} min ago" if ago < 7200 else f"{ago / 3600:.0f} h ago"
    text = f"{event.get('kind')} {event.get('result')} {when}"
    if event.get("volume"):
        text += f": {event['volume']}" + (f" ({event['volume_gib']} GiB)" if event.get("volume_gib") else "")
    if event.get("duration") is not None:
        text += f" in {event['duration']:.0f} s"
    if event.get("result") == "failed" and event.get("reason"):
        text += f" ({event['reason']})"
    return text


def cmd_status(config: Config, as_json: bool, export_stats: bool = False) -> int:
    data = daemon_status(config)
    source = "daemon" if data else "observed (no daemon running)"
    if data is None:
        data = _observed_status(config)
    if as_json:
        json.dump({"source": source, **data}, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return EXIT_OK
    print(f"source: {source}")
    for problem in [*(data.get("problems") or []), *([data["stuck"]] if data.get("stuck") else [])]:
        print(f"problem: {problem}")
    print(f"{'DRIVE':<16} {'TARGET':<8} {'PHASE':<14} {'VOLS':>4} {'SIZE':>8} {'USED':>7}  MOUNT / LAST ERROR")
    for name, st in data["drives"].items():
        used = f"{st['used_percent']:.1f}%" if st.get("used_percent") is not None else "-"
        print(f"{name:<16} {st['target']:<8} {st['phase']:<14} {len(st['volumes']):>4} "
              f"{str(st['size_gib']) + 'G':>8} {used:>7}  {st['mount_path']}")
        if st.get("seconds_to_full") is not None:
            print(f"{'':<16} writing {st['write_rate'] / 1e6:.1f} MB/s: full in {st['seconds_to_full']:.0f} s at "
                  f"that rate (a grow takes ~{st['grow_seconds']:.0f} s)")
        exports = st.get("exports") or {}
        if exports:
            state = "applied" if exports.get("in_sync") else f"not applied: {exports.get('detail')}"
            servers = ", ".join(exports.get("servers") or []) or "no server"
            names = ", ".join(exports.get("names") or []) or "none"
            print(f"{'':<16} exports: {names}; {state}")
            print(f"{'':<16} servers: {servers}")
            counted = [*(exports.get("stats") or {}).items(),
                       *((f"client {a}", c) for a, c in (exports.get("clients") or {}).items())]
            for export, c in counted if export_stats else ():
                each = c.get("latency_ns", 0) / max(c.get("requests", 0), 1) / 1e6
                print(f"{'':<16} {export}: read {c.get('read_bytes', 0)} B, wrote {c.get('write_bytes', 0)} B, "
                      f"{c.get('requests', 0)} requests ({c.get('errors', 0)} failed, {each:.2f} ms each)")
        if st.get("last_scale_event"):
            print(f"{'':<16} last scale event: {describe_event(st['last_scale_event'])}")
        if st.get("last_error"):
            print(f"{'':<16} error: {st['last_error']}")
        for note in st.get("notes", []):
            print(f"{'':<16} note: {note}")
    for name, vols in (data.get("unmanaged") or {}).items():
        print(f"{name:<16} {'-':<8} {'unmanaged':<14} {len(vols):>4}  (tagged, attached here, not in the config)")
    return EXIT_OK


def cmd_plan(config: Config) -> int:
    from bsud.cloud import make_provider
    from bsud.reconcile.engine import DriveReconciler
    from bsud.reconcile.observe import CloudSnapshot

    cloud = make_provider(config)
    snapshot = CloudSnapshot(cloud)
    for spec in config.drives:
        obs, plan = DriveReconciler(spec, cloud, snapshot, config.cloud.provider, nfs=config.nfs).plan_now()
        action = plan.action
        fields = {k: v for k, v in action.__dict__.items() if k != "reason" and v not in (None, "")}
        detail = " ".join(f"{k}={v}" for k, v in fields.items())
        print(f"{spec.name}: {plan.phase}: next {action.kind} {detail}".rstrip() + f" — {action.reason}")
        for note in plan.notes:
            print(f"{spec.name}: note: {note}")
        if not obs.exports.in_sync and action.kind != "ApplyExports":
            when = "once the drive is online and mounted" if spec.target.value == "online" else "before the unmount"
            print(f"{spec.name}: exports to change {when}: {obs.exports.detail}")
    return EXIT_OK


def cmd_ha_config(config: Config, write: bool) -> int:
    """Print (secrets masked) or write each ha drive's promoter file; one line per problem, exit 1 on any."""
    from bsud.ha.gateway import render, start_list, toml_string
    from bsud.ha.ocf import check_gateway
    from bsud.ha.promoter import Promoter
    from bsud.runner import Runner

    drives = [d for d in config.drives if d.ha is not None]
    if not drives:
        say("bsud: no drive has an ha section")
        return EXIT_ERROR
    failed = False
    for d in drives:
        assert d.ha is not None
        if d.ha.drbd_device is None:
            from bsud.host.drbd import DrbdResource

            try:
                device = DrbdResource(Runner(), d.ha.drbd_resource).device()
                why = f"'drbdadm sh-dev {d.ha.drbd_resource}' found no device"
            except BsudError as exc:  # drbdadm missing
                device, why = None, str(exc)
            if device is None:
                say(f"bsud: drive {d.name!r}: field 'ha.drbd-device': not given, and {why} (configure the DRBD "
                    "resource, or set drbd-device)")
                failed = True
                continue
            d = d.model_copy(update={"ha": d.ha.model_copy(update={"drbd_device": device})})
            assert d.ha is not None
        if write:
            changed = Promoter(Runner()).write(d.name, d.mount_path, d.ha, d.exports, d.mount_options)
            print(f"{Promoter.file(d.name, d.ha)}: {'written' if changed else 'unchanged'}")
            continue
        agents = start_list(d.name, d.mount_path, d.ha, d.exports, d.mount_options)
        problems = check_gateway(agents)
        for path in Promoter(Runner()).unprepared(agents):
            say(f"bsud: drive {d.name!r}: --write also writes {path} (nfsdcld must stop with nfs-server for the "
                "nfsserver agent's stop to succeed)", 4)
        text = render(d.name, d.mount_path, d.ha, d.exports, d.mount_options)
        for secret in config.secrets():  # as the file has it: in a shell word, in a TOML string
            text = text.replace(toml_string(secret)[1:-1], "********").replace(secret, "********")
        print(f"# {Promoter.file(d.name, d.ha)}\n{text}", end="")
        for problem in problems:
            say(f"bsud: drive {d.name!r}: {problem}")
        failed |= bool(problems)
    return EXIT_ERROR if failed else EXIT_OK


def cmd_delete_drive(config: Config, names: list[str], every: bool, yes: bool) -> int:
    from bsud.cleanup import delete_drives, doomed

    if not names and not every:
        say("bsud: delete-drive: name the drives to delete, or pass --all")
        return EXIT_CONFIG
    if not yes:
        if not sys.stdin.isatty():
            say("bsud: delete-drive: this deletes volumes and their data; refusing without --yes (stdin is not a "
                "terminal to ask on)")
            return EXIT_ERROR
        listing = doomed(config, names, every)
        for name, volumes in listing.items():
            print(f"{name}: {', '.join(volumes) or 'no volume'}")
        answer = input(f"Delete these drives and their volumes, data included? Type {' '.join(listing)} to "
                       "confirm: ").split()
        if sorted(answer) != sorted(listing) or not listing:
            say("bsud: delete-drive: not confirmed; nothing deleted", 6)
            return EXIT_ERROR
    return delete_drives(config, names, every, report=say)


def cmd_run(config: Config) -> int:
    from bsud.daemon import Daemon

    return Daemon(config).run()


def _command(config_path: str, args: argparse.Namespace) -> int:
    command = args.command or "run"
    config = _load(config_path)
    if command == "check-config":
        return cmd_check_config(config)
    if command == "status":
        return cmd_status(config, args.json, args.exports)
    if command == "plan":
        return cmd_plan(config)
    if command == "ha-config":
        return cmd_ha_config(config, args.write)
    if command == "wait-online":
        return cmd_wait_online(config, args.drives, args.timeout)
    if command == "reload":
        return cmd_reload(config, args.pid)
    if command == "delete-drive":
        return cmd_delete_drive(config, args.drives, args.all, args.yes)
    if command == "snapshot":
        return cmd_snapshot(config, args.drive, args.keep)
    if command == "snapshots":
        return cmd_snapshots(config, args.drive, args.json)
    if command == "delete-snapshot-set":
        return cmd_delete_snapshot_set(config, args.sets, args.yes)
    return cmd_run(config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    env = EnvSettings()
    level = getattr(args, "log_level", None) or env.bsud_log or "info"
    configure_logging(level)
    config_path = getattr(args, "config", None) or DEFAULT_CONFIG_PATH
    try:
        return _command(config_path, args)
    except InvalidConfig as exc:
        for problem in exc.problems:
            say(f"bsud: config error: {problem}")
        return EXIT_CONFIG
    except BsudError as exc:
        say(f"bsud: error: {exc}")
        return EXIT_ERROR
    except BrokenPipeError:
        # Whoever read our output stopped (| head): no traceback, and none at exit when Python flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
