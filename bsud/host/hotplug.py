"""Block devices coming and going, as the kernel and udev say: what the host can see, the host tells.

A cloud volume detached behind bsud's back (the console, a script, a failing attachment) disappears from the host at
once; one attached back appears. bsud need not list the cloud every minute to learn it: this watcher hands each
block device event (``add``, ``remove``, ``change``) to a callback, which wakes the drive the device belongs to with a
fresh listing. Uses udev's events where udevd runs (after its rules), the kernel's elsewhere.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from bsud.host.devices import udevd_running
from bsud.logs import get_logger

log = get_logger("bsud.host")

#: (action, device node such as ``/dev/sdc``); called on the watcher's thread.
Listener = Callable[[str, str], None]


class BlockEvents:
    """A thread reading block device events until :meth:`stop`. Without netlink (a container, no privilege) it
    says so once and does nothing: the full observations still see every change, only later."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self._stop = threading.Event()
        self._monitor: Any = None
        self._thread = threading.Thread(target=self._loop, name="block-events", daemon=True)

    def start(self) -> bool:
        try:
            import pyudev

            monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev" if udevd_running() else "kernel")
            monitor.filter_by("block")
            monitor.start()
        except Exception as exc:  # noqa: BLE001 - no netlink here: the periodic observations remain
            log.warning("no block device events (devices taken away are noticed at the next full check)",
                        error=str(exc))
            return False
        self._monitor = monitor
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                device = self._monitor.poll(timeout=1.0)
            except Exception as exc:  # noqa: BLE001 - a broken socket must not end the daemon
                log.warning("block device events stopped", error=str(exc))
                return
            if device is None or not device.device_node:
                continue
            try:
                self.listener(str(device.action), str(device.device_node))
            except Exception:  # noqa: BLE001 - a listener's bug never stops the watcher
                log.exception("block event listener failed", device=device.device_node)
