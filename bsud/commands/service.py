"""The commands systemd's units run: ``bsud wait-online`` (bsud-wait-online@.service) and ``bsud reload``
(ExecReload=), both answered from the running daemon's status file."""

from __future__ import annotations

import os
import re
import signal
import time

from bsud.commands.common import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, daemon_status, say
from bsud.config import Config, DriveConfig, InvalidConfig, Target

#: How long ``bsud wait-online`` waits by default (bsud-wait-online@.service).
WAIT_ONLINE_SECONDS = 300.0
#: How long ``bsud reload`` waits for the daemon to answer.
RELOAD_ANSWER_SECONDS = 60.0


def _mounted(data: dict | None, spec: DriveConfig) -> bool:
    """The running daemon says the drive is mounted, and the kernel agrees."""
    status = (data or {}).get("drives", {}).get(spec.name) or {}
    return bool(status.get("mounted")) and os.path.ismount(spec.mount_path)


def systemd_unescape(name: str) -> str:
    """A unit instance name as systemd-escape(1) writes it (``a\\x2bb``) back to the drive name (``a+b``): a
    drive name can hold ``+``, which a unit name cannot (``-`` stays as it is: drive names hold no ``/``)."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def cmd_wait_online(config: Config, names: list[str], timeout: float) -> int:
    """Until every named drive (default: each whose target is online) is mounted; 1 at the timeout."""
    names = [systemd_unescape(n) for n in names]
    known = {d.name: d for d in config.drives}
    unknown = [n for n in names if n not in known]
    if unknown:
        say(f"bsud: wait-online: {', '.join(map(repr, unknown))} not in {config.path} (its drives: "
            f"{', '.join(known) or 'none'})")
        return EXIT_CONFIG
    specs = [known[n] for n in names] if names else [d for d in config.drives if d.target == Target.ONLINE]
    never = [d.name for d in specs if d.target != Target.ONLINE]
    if never:
        say(f"bsud: wait-online: drive {', '.join(map(repr, never))} has target "
            f"{known[never[0]].target.value} in {config.path}: it will not be mounted")
        return EXIT_ERROR
    deadline = time.monotonic() + timeout
    while True:
        data = daemon_status(config)
        waiting = [d for d in specs if not _mounted(data, d)]
        if not waiting:
            say(f"bsud: wait-online: mounted: {', '.join(d.name for d in specs) or 'no online drive'}", 6)
            return EXIT_OK
        if time.monotonic() >= deadline:
            for d in waiting:
                status = (data or {}).get("drives", {}).get(d.name) or {}
                why = ("no bsud daemon is running" if data is None else
                       f"phase {status.get('phase', 'unknown')}" + (f", last error: {status['last_error']}"
                                                                    if status.get("last_error") else ""))
                say(f"bsud: wait-online: drive {d.name!r} is not mounted on {d.mount_path} after {timeout:.0f} s "
                    f"({why}); see bsud status")
            return EXIT_ERROR
        time.sleep(0.5)


def cmd_reload(config: Config, pid: int | None) -> int:
    """The config is valid (it was loaded): SIGHUP the daemon and wait for its answer."""
    from bsud.daemon import not_run_here

    refused = not_run_here(config)
    if refused:
        raise InvalidConfig(refused)
    data = daemon_status(config)
    pid = pid or (int(data["pid"]) if data else None)
    if not pid:
        say(f"bsud: reload: no bsud daemon is running with status file {config.daemon.status_file}")
        return EXIT_ERROR
    before = data.get("reloads", 0) if data and data.get("pid") == pid else -1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        say(f"bsud: reload: cannot signal bsud (pid {pid}): {exc.strerror}")
        return EXIT_ERROR
    deadline = time.monotonic() + RELOAD_ANSWER_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.2)
        data = daemon_status(config)
        if data and data.get("pid") == pid and data.get("reloads", 0) > before:
            result = str(data.get("reload_result", ""))
            if result.startswith("refused"):
                say(f"bsud: reload {result}")
                return EXIT_CONFIG
            say(f"bsud: config reloaded by bsud (pid {pid})", 6)
            return EXIT_OK
    say(f"bsud: reload: bsud (pid {pid}) did not answer within {RELOAD_ANSWER_SECONDS:.0f} s; see its log")
    return EXIT_ERROR
