"""Where the daemon's reports go: each sink gets the whole :class:`DaemonReport` after every step and every few
seconds between steps (the status file, sd_notify's STATUS= line, ``bsud.metrics``); events go to the engine's
listeners (``bsud.metrics``, :class:`EventCommand`)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bsud.logs import get_logger, without_secrets
from bsud.reconcile.events import Event
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
    #: Drives whose target is online but that are not mounted (yet).
    not_mounted: tuple[str, ...] = ()
    #: The nfs-ganesha bsud runs itself (``nfs.ganesha.managed``): ``state`` in words, ``pid``, ``restarts``.
    ganesha: dict[str, Any] | None = None
    #: SIGHUPs handled, and how the last one ended ("applied" / "refused: …"): ``bsud reload`` waits on them.
    reloads: int = 0
    reload_result: str = ""
    #: Why a drive's thread looks stuck (the watchdog is not pinged meanwhile), None when none is.
    stuck: str | None = None
    #: What is wrong for every drive (cloud permissions refused at start).
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "pid": self.pid, "config": self.config, "started": self.started,
                "updated": self.updated, "drives": {n: d.as_dict() for n, d in self.drives.items()},
                "unmanaged": self.unmanaged, "not_mounted": list(self.not_mounted), "ganesha": self.ganesha,
                "reloads": self.reloads, "reload_result": self.reload_result, "stuck": self.stuck,
                "problems": list(self.problems)}


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
        text = "; ".join(lines) if lines else "no drives"
        if report.not_mounted:
            text = f"not mounted yet: {', '.join(report.not_mounted)} | {text}"
        if report.stuck:
            text = f"stuck: {report.stuck} | {text}"
        for problem in report.problems:
            text = f"{problem} | {text}"
        notify("STATUS=" + text)


class EventCommand:
    """``daemon.on-event``: the user's command, run once per event with its facts in ``BSUD_*`` environment
    variables (``Event.environment``), without a shell, stdin from /dev/null.

    One thread runs the commands in order; a drive never waits for it (a full queue drops the event, logged). A
    command that exits non-zero or outlives its timeout (its whole process group is killed) is logged with the
    end of its output. The daemon's credentials are left out of its environment.
    """

    QUEUE = 100

    def __init__(self, argv: tuple[str, ...], timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        self.queue: queue.Queue[Event | None] = queue.Queue(maxsize=self.QUEUE)
        self.thread = threading.Thread(target=self._loop, name="on-event", daemon=True)
        self.thread.start()

    def __call__(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            log.warning("on-event queue full: event not passed to the command", event_kind=event.kind,
                        drive=event.drive)

    def _loop(self) -> None:
        while (event := self.queue.get()) is not None:
            try:
                self.run(event)
            except Exception:  # noqa: BLE001 - the hook thread must outlive any one event
                log.exception("on-event command failed to run", event_kind=event.kind, drive=event.drive)

    def run(self, event: Event) -> int | None:
        """Run the command for one event; its exit code, None when it timed out."""
        env = {**without_secrets(os.environ), **event.environment()}
        started = time.monotonic()
        try:
            proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError as exc:
            log.error("cannot run the on-event command", command=self.argv[0], error=str(exc))
            return 127
        try:
            output, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            log.error("on-event command timed out, killed", command=self.argv[0], timeout=self.timeout,
                      event_kind=event.kind, drive=event.drive)
            return None
        tail = output.decode(errors="replace").strip()[-500:]
        if proc.returncode != 0:
            log.error("on-event command failed", command=self.argv[0], returncode=proc.returncode, output=tail,
                      event_kind=event.kind, drive=event.drive)
        else:
            log.debug("on-event command done", command=self.argv[0], event_kind=event.kind, drive=event.drive,
                      seconds=round(time.monotonic() - started, 2))
        return proc.returncode

    def close(self, wait: float = 5.0) -> None:
        """Run what is queued (for up to ``wait`` seconds), then stop."""
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=wait)
        self.thread.join(wait)
