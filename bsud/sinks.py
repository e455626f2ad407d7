"""Where the daemon's reports go: each sink gets the whole :class:`DaemonReport` after every step and every few
seconds between steps. The status file and sd_notify's STATUS= line today; metrics or events are one more class
here and one more entry in ``Daemon.sinks``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bsud.logs import get_logger
from bsud.reconcile.report import DriveStatus
from bsud.sdnotify import notify

log = get_logger("bsud.daemon")


@dataclass(frozen=True)
class DaemonReport:
    version: str
    pid: int
    config: str
    started: float
    updated: float
    drives: dict[str, DriveStatus]
    unmanaged: dict[str, list[str]]

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "pid": self.pid, "config": self.config, "started": self.started,
                "updated": self.updated, "drives": {n: d.as_dict() for n, d in self.drives.items()},
                "unmanaged": self.unmanaged}


class Sink(Protocol):
    def publish(self, report: DaemonReport) -> None: ...


def write_status(path: str, data: dict[str, Any]) -> None:
    """Atomic write: readers see the old file or the new one, never half of one (nor a left-over temp file
    when the disk is full)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


class StatusFile:
    """The JSON status file ``bsud status`` reads (its path read at each publish: a reload may change it)."""

    def __init__(self, path: Callable[[], str]) -> None:
        self.path = path

    def publish(self, report: DaemonReport) -> None:
        try:
            write_status(self.path(), report.as_dict())
        except OSError as exc:
            log.warning("cannot write the status file", path=self.path(), error=str(exc))


class SdNotifyStatus:
    """One line per drive in systemd's STATUS= (``systemctl status bsud``)."""

    def publish(self, report: DaemonReport) -> None:
        lines = [d.line() for d in report.drives.values()]
        notify("STATUS=" + ("; ".join(lines) if lines else "no drives"))
