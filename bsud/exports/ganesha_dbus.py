"""nfs-ganesha's administration over the system D-Bus: the calls bsud makes (``org.ganesha.nfsd.exportmgr`` to add,
update and remove exports and list them; the ``exportstats`` and ``clientstats`` I/O counters) and their replies.

The D-Bus library is jeepney: pure Python (no libdbus/GLib binding to build), a blocking API that fits bsud's
worker threads, one connection per thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jeepney import DBusAddress, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

from bsud.exports.files import ExportError

BUS_NAME = "org.ganesha.nfsd"
EXPORT_MGR = DBusAddress("/org/ganesha/nfsd/ExportMgr", bus_name=BUS_NAME, interface="org.ganesha.nfsd.exportmgr")
EXPORT_STATS = DBusAddress("/org/ganesha/nfsd/ExportMgr", bus_name=BUS_NAME,
                           interface="org.ganesha.nfsd.exportstats")
CLIENT_MGR = DBusAddress("/org/ganesha/nfsd/ClientMgr", bus_name=BUS_NAME, interface="org.ganesha.nfsd.clientmgr")
CLIENT_STATS = DBusAddress("/org/ganesha/nfsd/ClientMgr", bus_name=BUS_NAME,
                           interface="org.ganesha.nfsd.clientstats")
#: The NFS versions whose per-export I/O ganesha counts (``GetNFSv3IO``, …).
IO_METHODS = ("GetNFSv3IO", "GetNFSv40IO", "GetNFSv41IO", "GetNFSv42IO")
CALL_TIMEOUT = 15.0


def parse_show_exports(body: tuple[Any, ...]) -> dict[int, str]:
    """``ShowExports`` → {export id: path}: its reply is (timestamp, [(id, path, …), …])."""
    return {int(entry[0]): str(entry[1]) for entry in body[1]}


@dataclass(frozen=True)
class IoStats:
    """One export's I/O as ganesha counts it, summed over the NFS versions."""

    read_bytes: int = 0
    write_bytes: int = 0
    requests: int = 0
    errors: int = 0
    latency_ns: int = 0       # total time spent in the requests counted

    def __add__(self, other: IoStats) -> IoStats:
        return IoStats(self.read_bytes + other.read_bytes, self.write_bytes + other.write_bytes,
                       self.requests + other.requests, self.errors + other.errors, self.latency_ns + other.latency_ns)


def parse_io(body: tuple[Any, ...]) -> IoStats:
    """``GetNFSv*IO`` → IoStats: (ok, error, timestamp, read, write), each (requested, transferred, ops, errors,
    latency, 0); a version without activity answers ok=False."""
    if not body or not body[0]:
        return IoStats()
    read, write = body[3], body[4]
    return IoStats(read_bytes=int(read[1]), write_bytes=int(write[1]), requests=int(read[2]) + int(write[2]),
                   errors=int(read[3]) + int(write[3]), latency_ns=int(read[4]) + int(write[4]))


class NoAnswer(ExportError):
    """ganesha (or the bus) did not answer in time: asking it more now would only wait as long again."""


class NotRunning(ExportError):
    """ganesha is not on the bus: it serves nothing."""


class Bus:
    """Calls to ganesha on the system D-Bus; one connection per thread (jeepney's blocking connections are not
    shared), opened when first needed and again after a failure."""

    def __init__(self, bus: str = "SYSTEM") -> None:
        self.bus = bus
        self._local = threading.local()

    def _connection(self) -> DBusConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = open_dbus_connection(bus=self.bus)
            except (OSError, KeyError, ValueError) as exc:
                raise ExportError(f"the system D-Bus is not reachable ({exc}): start dbus (package dbus)") from None
            self._local.conn = conn
        return conn

    def call(self, address: DBusAddress, method: str, signature: str | None = None, body: tuple[Any, ...] = ()
             ) -> tuple[Any, ...]:
        conn = self._connection()
        try:
            reply = conn.send_and_get_reply(new_method_call(address, method, signature, body), timeout=CALL_TIMEOUT)
        except (OSError, TimeoutError, ConnectionError) as exc:
            self._local.conn = None
            conn.close()
            raise NoAnswer(f"nfs-ganesha {method}: no answer on the system D-Bus within {CALL_TIMEOUT:g} s "
                           f"({str(exc) or 'timed out'})") from None
        try:
            return tuple(unwrap_msg(reply))
        except DBusErrorResponse as err:
            detail = err.data[0] if err.data else ""
            if err.name in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
                raise NotRunning("nfs-ganesha is not on the system D-Bus (not running? start nfs-ganesha)") from None
            raise ExportError(f"nfs-ganesha {method}: {detail or err.name}") from None

    def show_exports(self) -> dict[int, str]:
        return parse_show_exports(self.call(EXPORT_MGR, "ShowExports"))

    def add_export(self, file: Path, ident: int) -> None:
        self.call(EXPORT_MGR, "AddExport", "ss", (str(file), f"EXPORT(Export_Id={ident})"))

    def update_export(self, file: Path, ident: int) -> None:
        self.call(EXPORT_MGR, "UpdateExport", "ss", (str(file), f"EXPORT(Export_Id={ident})"))

    def remove_export(self, ident: int) -> None:
        self.call(EXPORT_MGR, "RemoveExport", "q", (ident,))

    def io(self, ident: int) -> IoStats:
        """One export's I/O (``org.ganesha.nfsd.exportstats``, by export id)."""
        return self._io(EXPORT_STATS, "q", ident)

    def show_clients(self) -> list[str]:
        """The addresses of the clients ganesha knows (``ShowClients``: (timestamp, [(address, …), …]))."""
        return [str(entry[0]) for entry in self.call(CLIENT_MGR, "ShowClients")[1]]

    def client_io(self, address: str) -> IoStats:
        """One client's I/O over all exports (``org.ganesha.nfsd.clientstats``, by address)."""
        return self._io(CLIENT_STATS, "s", address)

    def _io(self, address: DBusAddress, signature: str, key: int | str) -> IoStats:
        total = IoStats()
        for method in IO_METHODS:
            try:
                total = total + parse_io(self.call(address, method, signature, (key,)))
            except NoAnswer:
                raise
            except ExportError:
                continue  # a version ganesha does not serve answers with an error: nothing to count
        return total
