"""A managed nfs-ganesha (``nfs.ganesha.managed``): bsud runs one ``ganesha.nfsd -F`` itself and keeps it running.

Before starting it, the supervisor checks what ganesha needs and cannot start itself: the system D-Bus (all of
bsud's administration goes over it) and rpcbind (NFSv3, MOUNT and NLM register there); while one is missing the
status says which and how to start it, and nothing is started. Then:

- a ganesha already on the bus (``org.ganesha.nfsd`` has an owner: the one bsud started before it was killed with
  -9, say) is adopted, not doubled — a second one could not bind the NFS port anyway;
- a process that exits, or whose heartbeat stops for ``heartbeat-timeout-seconds`` (hung, or stopped), is stopped
  (SIGTERM, then SIGKILL) and started again after 1, 2, 4… seconds up to ``restart-backoff-max-seconds``; the
  backoff starts over once a process has run a minute;
- a new process forgets the exports added over D-Bus: ``on_up`` (the daemon wakes the drives) runs at its first
  heartbeat, so the drives add them again at once rather than at their next full check;
- bsud stopping stops it (a managed server lives and dies with bsud, as in its systemd unit's control group).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from jeepney import message_bus
from jeepney.io.blocking import Proxy, open_dbus_connection
from jeepney.wrappers import DBusErrorResponse

from bsud.exports.ganesha_dbus import BUS_NAME
from bsud.logs import get_logger

if TYPE_CHECKING:
    from bsud.exports.settings import GaneshaSettings

log = get_logger("bsud.exports")

#: A process that ran this long counts as healthy: the next failure waits 1 s again.
STABLE_SECONDS = 60.0
#: ganesha's first heartbeat comes once it has read its config and joined the bus: allowed this much more.
STARTUP_SECONDS = 60.0
#: From SIGTERM to SIGKILL.
TERM_SECONDS = 10.0
POLL_SECONDS = 0.5
RPCBIND_SOCKET = "/run/rpcbind.sock"


def rpcbind_running(unix_socket: str = RPCBIND_SOCKET, port: int = 111) -> bool:
    """rpcbind answers on its local socket or on port 111."""
    for family, address in ((socket.AF_UNIX, unix_socket), (socket.AF_INET, ("127.0.0.1", port))):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(address)
                return True
        except OSError:
            continue
    return False


def bus_problem(bus: str = "SYSTEM") -> str | None:
    try:
        with open_dbus_connection(bus=bus):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure to connect means the same to the operator
        return f"the system D-Bus is not running ({str(exc) or type(exc).__name__}); start it (package dbus)"


def bus_owner_pid(bus: str = "SYSTEM") -> int | None:
    """The pid of the process that owns ganesha's bus name, None when nobody does."""
    with open_dbus_connection(bus=bus) as conn:
        try:
            return int(Proxy(message_bus, conn).GetConnectionUnixProcessID(BUS_NAME)[0])
        except DBusErrorResponse:
            return None


def alive(pid: int) -> bool:
    """The process runs (a zombie does not: an exited child of ours not yet waited for)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child of ours not yet waited for
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class ManagedGanesha:
    """Runs and supervises one ganesha.nfsd in a thread of its own. ``heartbeat_last`` is the heartbeat listener's
    time (monotonic) of ganesha's last heartbeat, None before the first; ``prerequisites`` names what is missing,
    None when nothing is; ``owner_pid`` is who owns ganesha's bus name (the tests give stand-ins for the three)."""

    def __init__(self, settings: GaneshaSettings, heartbeat_last: Callable[[], float | None],
                 argv: list[str] | None = None, prerequisites: Callable[[], str | None] | None = None,
                 owner_pid: Callable[[], int | None] | None = None,
                 on_up: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.heartbeat_last = heartbeat_last
        self.argv = argv or ["ganesha.nfsd", "-F", "-f", settings.config_file, "-L", settings.log_file,
                             "-p", settings.pid_file]
        self.prerequisites = prerequisites or self._prerequisites
        self.owner_pid = owner_pid or bus_owner_pid
        self.on_up = on_up
        #: In words, for the status ("running, pid 123", "restarting in 4 s (exited with code 2)", "waiting: …").
        self.state = "not started"
        self.pid: int | None = None
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _prerequisites() -> str | None:
        problem = bus_problem()
        if problem:
            return problem
        if not rpcbind_running():
            return "rpcbind is not running (ganesha registers NFS and MOUNT there); start it (package rpcbind)"
        return None

    def status(self) -> dict[str, object]:
        """For the status file and the metrics (``bsud_ganesha_restarts_total``, ``bsud_ganesha_running``)."""
        return {"state": self.state, "pid": self.pid, "restarts": self.restarts}

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ganesha-supervisor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop supervising and stop the process (SIGTERM, SIGKILL after 10 s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TERM_SECONDS + 5)
        self._end("bsud is stopping")
        self.state = "stopped"

    # -- the loop --------------------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        said = ""
        while not self._stop.is_set():
            problem = self.prerequisites()
            if problem:
                self.state = f"waiting: {problem}"
                if problem != said:
                    log.warning("nfs-ganesha not started", reason=problem)
                    said = problem
                self._stop.wait(5)
                continue
            said = ""
            try:
                owner = self.owner_pid()
            except Exception as exc:  # noqa: BLE001 - the bus went away between the checks: check again
                self.state = f"waiting: cannot ask the system D-Bus ({exc})"
                self._stop.wait(2)
                continue
            started = time.monotonic()
            if owner is not None and alive(owner):
                self.pid, self._proc = owner, None
                log.info("nfs-ganesha already running: adopted", pid=owner)
            elif not self._spawn():
                failures += 1
                self._backoff(failures, "could not be started")
                continue
            reason = self._watch(started)
            if self._stop.is_set():
                return
            self._end(reason)
            failures = 0 if time.monotonic() - started >= STABLE_SECONDS else failures + 1
            self.restarts += 1
            self._backoff(failures, reason)

    def _spawn(self) -> bool:
        for path in (self.settings.log_file, self.settings.pid_file):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self.state = f"cannot start {self.argv[0]}: {exc.strerror or exc}"
            log.error("nfs-ganesha could not be started", argv=self.argv, error=str(exc))
            return False
        self.pid = self._proc.pid
        log.info("nfs-ganesha started", pid=self.pid, argv=self.argv)
        return True

    def _backoff(self, failures: int, reason: str) -> None:
        delay = min(self.settings.restart_backoff_max_seconds, 2.0 ** max(failures - 1, 0))
        self.state = f"restarting in {delay:g} s ({reason})"
        log.warning("nfs-ganesha stopped; starting it again", reason=reason, in_seconds=delay,
                    restarts=self.restarts)
        self._stop.wait(delay)

    def _watch(self, started: float) -> str:
        """Until the process ends or hangs (or bsud stops): why it has to be started again."""
        up = False
        timeout = self.settings.heartbeat_timeout_seconds
        while not self._stop.wait(POLL_SECONDS):
            if self._proc is not None:
                rc = self._proc.poll()
                if rc is not None:
                    return f"exited with code {rc}" if rc >= 0 else f"killed by signal {-rc}"
            elif self.pid is None or not alive(self.pid):
                return "exited"
            last = self.heartbeat_last()
            now = time.monotonic()
            if last is not None and last >= started:
                if not up:
                    up = True
                    self.state = f"running, pid {self.pid}"
                    if self.on_up is not None:
                        self.on_up()
                if now - last > timeout:
                    return f"no heartbeat for {now - last:.0f} s"
            else:
                self.state = f"starting, pid {self.pid}"
                if now - started > timeout + STARTUP_SECONDS:
                    return f"no heartbeat {now - started:.0f} s after it started"
        return "bsud is stopping"

    def _end(self, reason: str) -> None:
        """The process gone: SIGTERM (SIGCONT first: a stopped process would not act on it), SIGKILL if it stays."""
        pid = self.pid
        if pid is None or not alive(pid):
            self._reap()
            self.pid = None
            return
        log.info("stopping nfs-ganesha", pid=pid, reason=reason)
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
        deadline = time.monotonic() + TERM_SECONDS
        while alive(pid) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
        if alive(pid):
            log.warning("nfs-ganesha did not stop on SIGTERM: killed", pid=pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while alive(pid):
                self._reap()
                time.sleep(0.1)
        self._reap()
        self.pid = None

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
