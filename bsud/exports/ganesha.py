"""NFS through nfs-ganesha, administered over the system D-Bus — never by restarting it.

bsud writes each drive's EXPORT blocks to ``<exports-dir>/<drive>.conf`` (with the replace-file transaction) and
hands them to the running server with ``org.ganesha.nfsd.exportmgr``: ``AddExport(file, "EXPORT(Export_Id=N)")``
for an export ganesha does not serve, ``UpdateExport`` for one it does, ``RemoveExport(N)`` for one that went.
What ganesha serves is read back with ``ShowExports``, so a restarted server (which forgot the exports added
over D-Bus) is drift, repaired like any other. Export ids are derived from the drive and the path: stable across
restarts of bsud and of ganesha, the same on every host.

Readiness is ganesha's own heartbeat: the ``heartbeat`` signal of ``org.ganesha.nfsd.admin`` it sends every
second while healthy (``dbus_heartbeat.c``); none for ``heartbeat-timeout-seconds`` means not ready.

The D-Bus library is jeepney: pure Python (no libdbus/GLib binding to build), a blocking API that fits bsud's
worker threads, one connection per thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jeepney import DBusAddress, MatchRule, message_bus, new_method_call
from jeepney.io.blocking import DBusConnection, Proxy, open_dbus_connection
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

from bsud.config.exports import GaneshaSettings, NfsExport, export_name
from bsud.exports.base import HEADER, ExportKind, ExportState, directory_of
from bsud.exports.files import ExportError, replace_file
from bsud.exports.ganesha_process import BUS_NAME, ManagedGanesha
from bsud.logs import get_logger
from bsud.runner import Runner

log = get_logger("bsud.exports")

EXPORT_MGR = DBusAddress("/org/ganesha/nfsd/ExportMgr", bus_name=BUS_NAME, interface="org.ganesha.nfsd.exportmgr")
EXPORT_STATS = DBusAddress("/org/ganesha/nfsd/ExportMgr", bus_name=BUS_NAME,
                           interface="org.ganesha.nfsd.exportstats")
CLIENT_MGR = DBusAddress("/org/ganesha/nfsd/ClientMgr", bus_name=BUS_NAME, interface="org.ganesha.nfsd.clientmgr")
CLIENT_STATS = DBusAddress("/org/ganesha/nfsd/ClientMgr", bus_name=BUS_NAME,
                           interface="org.ganesha.nfsd.clientstats")
HEARTBEAT = MatchRule(type="signal", interface="org.ganesha.nfsd.admin", member="heartbeat")
#: Export ids bsud gives (ganesha's are 16 bits; 0 is the pseudo root, low ones are usually hand-written).
FIRST_ID, LAST_ID = 1000, 64999
#: The NFS versions whose per-export I/O ganesha counts (``GetNFSv3IO``, …).
IO_METHODS = ("GetNFSv3IO", "GetNFSv40IO", "GetNFSv41IO", "GetNFSv42IO")
CALL_TIMEOUT = 15.0


def export_id(drive: str, path: str) -> int:
    digest = int(hashlib.sha256(f"{drive}/{path.strip('/')}".encode()).hexdigest(), 16)
    return FIRST_ID + digest % (LAST_ID - FIRST_ID + 1)


def pseudo_path(drive: str, export: NfsExport) -> str:
    """Where NFSv4 clients find it: ``/bsud/<drive>[/<path>]``."""
    sub = export.path.strip("/")
    return f"/bsud/{drive}" + (f"/{sub}" if sub else "")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def export_block(drive: str, mount_path: str, export: NfsExport) -> str:
    """One EXPORT block: the exports(5) words of the config translated (checked at load: GANESHA_OPTIONS)."""
    words = {o.partition("=")[0]: o.partition("=")[2] for o in export.options}
    squash = "all_squash" if "all_squash" in words else "no_root_squash" if "no_root_squash" in words \
        else "root_squash"
    lines = [f"EXPORT {{",
             f"    Export_Id = {export_id(drive, export.path)};",
             f"    Path = {_quote(directory_of(mount_path, export))};",
             f"    Pseudo = {_quote(pseudo_path(drive, export))};",
             "    Access_Type = None;",
             f"    Squash = {squash};",
             f"    SecType = {', '.join(words['sec'].split(':')) if words.get('sec') else 'sys'};"]
    if "anonuid" in words:
        lines.append(f"    Anonymous_Uid = {words['anonuid']};")
    if "anongid" in words:
        lines.append(f"    Anonymous_Gid = {words['anongid']};")
    if "secure" in words or "insecure" in words:
        lines.append(f"    PrivilegedPort = {'true' if 'secure' in words else 'false'};")
    lines += ["    FSAL {", "        Name = VFS;", "    }",
              "    CLIENT {",
              f"        Clients = {', '.join(export.clients)};",  # ganesha takes them bare (checked at load)
              f"        Access_Type = {'RO' if 'ro' in words else 'RW'};",
              "    }",
              "}"]
    return "\n".join(lines) + "\n"


def render(drive: str, mount_path: str, exports: list[NfsExport]) -> str | None:
    """The drive's file of EXPORT blocks (None: no ganesha export)."""
    if not exports:
        return None
    return HEADER.format(drive=drive) + "".join(export_block(drive, mount_path, e) for e in exports)


ID_RE = re.compile(r"^\s*Export_Id\s*=\s*(\d+)\s*;", re.MULTILINE)
PATH_RE = re.compile(r'^\s*Path\s*=\s*"((?:[^"\\]|\\.)*)"\s*;', re.MULTILINE)


def ids_in(text: str | None) -> dict[int, str]:
    """The export ids of a file bsud wrote → their paths."""
    if not text:
        return {}
    ids = [int(m) for m in ID_RE.findall(text)]
    paths = [p.replace('\\"', '"').replace("\\\\", "\\") for p in PATH_RE.findall(text)]
    return dict(zip(ids, paths))


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


_HEARTBEATS: dict[str, Heartbeat] = {}
_HEARTBEATS_LOCK = threading.Lock()


def heartbeat(bus: str = "SYSTEM") -> Heartbeat:
    """The process's one heartbeat listener on ``bus``."""
    with _HEARTBEATS_LOCK:
        return _HEARTBEATS.setdefault(bus, Heartbeat(bus))


#: The ganesha bsud runs itself (``nfs.ganesha.managed``), while the daemon has one.
_MANAGED: list[ManagedGanesha] = []
_MANAGED_LOCK = threading.Lock()


def start_managed(settings: GaneshaSettings, on_up: Callable[[], None] | None = None) -> ManagedGanesha:
    """Run and supervise ganesha.nfsd (the daemon does, when a drive has ganesha exports and ``managed`` is set)."""
    with _MANAGED_LOCK:
        if not _MANAGED:
            listener = heartbeat()
            listener.start()
            _MANAGED.append(ManagedGanesha(settings, lambda: listener.last, on_up=on_up))
            _MANAGED[0].start()
        return _MANAGED[0]


def stop_managed() -> None:
    with _MANAGED_LOCK:
        managed = _MANAGED.pop() if _MANAGED else None
    if managed is not None:
        managed.stop()


def managed() -> ManagedGanesha | None:
    return _MANAGED[0] if _MANAGED else None


class Ganesha(ExportKind):
    kind = "nfs-ganesha"

    def __init__(self, runner: Runner, settings: GaneshaSettings | None = None, bus: str = "SYSTEM") -> None:
        super().__init__(runner)
        self.settings = settings or GaneshaSettings()
        self.bus = Bus(bus)
        self.heartbeat = heartbeat(bus)

    def file(self, drive: str) -> Path:
        return Path(self.settings.exports_dir) / f"{drive}.conf"

    def readiness(self) -> tuple[bool, str]:
        age = self.heartbeat.age()
        limit = self.settings.heartbeat_timeout_seconds
        process = managed() if self.settings.managed else None
        supervised = "" if process is None else f"; managed: {process.state}" + (
            f", {process.restarts} restart{'s' * (process.restarts != 1)}" if process.restarts else "")
        if age is not None and age <= limit:
            return True, f"ready (heartbeat {age:.1f} s ago{supervised})"
        if age is None:
            return False, "not ready (no heartbeat seen" + (
                f"; the system D-Bus is not reachable: {self.heartbeat.error}" if self.heartbeat.error else "") + \
                f"{supervised})"
        return False, f"not ready (no heartbeat for {age:.0f} s{supervised})"

    def _unserved(self, drive: str, mount_path: str, exports: list[NfsExport],
                  listed: dict[int, str]) -> str | None:
        for export in exports:
            ident, path = export_id(drive, export.path), directory_of(mount_path, export)
            if ident not in listed:
                return f"export {ident} ({path}) is not served"
            if listed[ident] != path:
                return f"export id {ident} is served for {listed[ident]}, not {path}"
        return None

    def observe(self, drive: str, mount_path: str, exports: list[NfsExport]) -> ExportState:
        path = self.file(drive)
        current = path.read_text() if path.exists() else None
        if not exports and current is None:  # nothing of the drive's to look for: ganesha is not asked
            return ExportState(self.kind, 0, applied=True, present=False, server="")
        wanted = render(drive, mount_path, exports)
        _, server = self.readiness()
        detail = ""
        listed: dict[int, str] = {}
        try:
            listed = self.bus.show_exports()
        except ExportError as exc:
            detail = str(exc)
        if current != wanted:
            detail = f"{path} " + ("is missing" if current is None else "differs from the config")
        elif wanted is not None and not detail:
            detail = self._unserved(drive, mount_path, exports, listed) or ""
        # (no detail: the file is as wanted — not None, it differs otherwise — and ganesha serves each export)
        return ExportState(self.kind, len(exports), applied=not detail, present=current is not None,
                           server=server if exports else "", detail=detail)

    def _sync(self, path: Path, known: set[int]) -> None:
        """Make ganesha serve what ``path`` holds now: each of its exports added (or updated), each id of
        ``known`` it no longer holds removed."""
        text = path.read_text() if path.exists() else None
        now = ids_in(text)
        listed = self.bus.show_exports()
        for ident in sorted(known - set(now)):
            if ident in listed:
                self.bus.remove_export(ident)
        for ident in now:
            if ident in listed:
                self.bus.update_export(path, ident)
            else:
                self.bus.add_export(path, ident)

    def apply(self, drive: str, mount_path: str, exports: list[NfsExport]) -> bool:
        if not os.path.ismount(mount_path):
            raise ExportError(f"drive {drive!r} is not mounted on {mount_path}; not exporting it")
        for export in exports:
            Path(directory_of(mount_path, export)).mkdir(parents=True, exist_ok=True, mode=0o755)
        path = self.file(drive)
        old = ids_in(path.read_text() if path.exists() else None)
        text = render(drive, mount_path, exports)
        new = ids_in(text)
        listed = self.bus.show_exports()
        taken = [f"{i} ({listed[i]})" for i, p in new.items() if i in listed and listed[i] != p and i not in old]
        if taken:  # checked before anything changes
            raise ExportError(f"nfs-ganesha already serves export id {', '.join(taken)}, which bsud derives for "
                              f"drive {drive!r}; remove that export from ganesha's own configuration")
        known = set(old) | set(new)

        def verify() -> None:
            missing = self._unserved(drive, mount_path, exports, self.bus.show_exports())
            if missing:
                raise ExportError(f"after AddExport, {missing}")

        # drift: ganesha restarted (it forgets what came over D-Bus) or an export was removed by hand
        return replace_file(path, text, apply=lambda: self._sync(path, known), verify=verify,
                            drifted=lambda: bool(self._unserved(drive, mount_path, exports, listed)))

    def withdraw(self, drive: str) -> bool:
        """A ganesha that is not running serves none of the drive's exports: the file goes all the same (nothing may
        keep the drive from going offline then); one that runs must stop serving them first."""
        path = self.file(drive)
        if not path.exists():
            return False
        ours = set(ids_in(path.read_text()))

        def sync() -> None:
            try:
                self._sync(path, ours)
            except NotRunning:
                log.info("nfs-ganesha is not running: nothing of the drive's is served", drive=drive)

        def verify() -> None:
            try:
                left = sorted(ours & set(self.bus.show_exports()))
            except NotRunning:
                return
            if left:
                raise ExportError(f"after RemoveExport, ganesha still serves {', '.join(map(str, left))}")

        return replace_file(path, None, apply=sync, verify=verify)

    def stats(self, drive: str, exports: list[NfsExport]) -> dict[str, dict[str, int]]:
        if not self.readiness()[0]:
            return {}  # a server without a heartbeat would make each of these calls wait for its timeout
        try:
            return {export_name(e): asdict(self.bus.io(export_id(drive, e.path))) for e in exports}
        except ExportError:
            return {}  # ganesha not answering: the observation says so already

    def clients(self) -> dict[str, dict[str, int]]:
        if not self.readiness()[0]:
            return {}
        try:
            return {address: asdict(self.bus.client_io(address)) for address in self.bus.show_clients()}
        except ExportError:
            return {}

    def io(self, drive: str, exports: list[NfsExport]) -> dict[str, IoStats]:
        """Each export's I/O counters (by its path in the config, ``/`` for the whole drive)."""
        return {export.path or "/": self.bus.io(export_id(drive, export.path)) for export in exports}
