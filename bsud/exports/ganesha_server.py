"""The nfs-ganesha a bsud process talks to: one listener for its heartbeat, and the process bsud runs itself
(``nfs.ganesha.managed``). The daemon owns one :class:`GaneshaServer` and hands it to every drive's ganesha kind;
a one-shot command's kinds make their own.

Readiness is ganesha's own heartbeat: the ``heartbeat`` signal of ``org.ganesha.nfsd.admin`` it sends every
second while healthy (``dbus_heartbeat.c``); none for ``heartbeat-timeout-seconds`` means not ready.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jeepney import MatchRule, message_bus
from jeepney.io.blocking import Proxy, open_dbus_connection

from bsud.exports.ganesha_process import ManagedGanesha
from bsud.logs import get_logger

if TYPE_CHECKING:
    from bsud.exports.settings import GaneshaSettings

log = get_logger("bsud.exports")

HEARTBEAT = MatchRule(type="signal", interface="org.ganesha.nfsd.admin", member="heartbeat")


class Heartbeat:
    """Listens for ganesha's heartbeat signal in a thread of its own; remembers when the last one came."""

    def __init__(self, bus: str = "SYSTEM") -> None:
        self.bus = bus
        self.last: float | None = None
        #: Why the listener is not listening (the bus is unreachable…), None while it listens or starts.
        self.error: str | None = None
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="ganesha-heartbeat", daemon=True).start()

    def age(self) -> float | None:
        """Seconds since the last heartbeat (None: none seen since bsud started)."""
        self.start()
        return None if self.last is None else time.monotonic() - self.last

    def _run(self) -> None:
        while True:
            try:
                with open_dbus_connection(bus=self.bus) as conn:
                    Proxy(message_bus, conn).AddMatch(HEARTBEAT)
                    with conn.filter(HEARTBEAT) as queue:
                        self.error = None
                        while True:
                            signal = conn.recv_until_filtered(queue)
                            if signal.body and signal.body[0]:
                                self.last = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the bus went away: listen again in a moment
                self.error = str(exc) or type(exc).__name__
                log.debug("listening for nfs-ganesha's heartbeat failed; again in 2 s", error=str(exc))
                time.sleep(2)


class GaneshaServer:
    """The heartbeat listener on ``bus`` (started when first asked) and the managed process, while there is one."""

    def __init__(self, bus: str = "SYSTEM") -> None:
        self.bus = bus
        self.heartbeat = Heartbeat(bus)
        #: The ganesha.nfsd bsud runs and supervises (``nfs.ganesha.managed``), None while it runs none.
        self.managed: ManagedGanesha | None = None
        self._lock = threading.Lock()

    def start_managed(self, settings: GaneshaSettings, on_up: Callable[[], None] | None = None) -> ManagedGanesha:
        """Run and supervise ganesha.nfsd (once: the running one is returned again)."""
        with self._lock:
            if self.managed is None:
                self.heartbeat.start()
                listener = self.heartbeat
                self.managed = ManagedGanesha(settings, lambda: listener.last, on_up=on_up)
                self.managed.start()
            return self.managed

    def stop_managed(self) -> None:
        with self._lock:
            managed, self.managed = self.managed, None
        if managed is not None:
            managed.stop()

    def status(self) -> dict[str, Any] | None:
        """The managed process for the status file and the metrics (None when bsud runs none)."""
        managed = self.managed
        return None if managed is None else managed.status()
