"""NFS through nfs-ganesha, administered over the system D-Bus — never by restarting it: the ``nfs-ganesha`` kind
(an ``nfs`` export with ``"server": "ganesha"``) and the config's ``nfs.ganesha`` section.

bsud writes each drive's EXPORT blocks to ``<exports-dir>/<drive>.conf`` (``ganesha_config``, with the replace-file
transaction) and hands them to the running server (``ganesha_dbus``): ``AddExport(file, "EXPORT(Export_Id=N)")``
for an export ganesha does not serve, ``UpdateExport`` for one it does, ``RemoveExport(N)`` for one that went.
What ganesha serves is read back with ``ShowExports``, so a restarted server (which forgot the exports added
over D-Bus) is drift, repaired like any other. Readiness is ganesha's heartbeat (``ganesha_server``).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path


from bsud.exports.base import ExportKind, ExportPlugin, ExportState, Services, directory_of
from bsud.exports.files import ExportError, replace_file
from bsud.exports.ganesha_config import export_id, ids_in, render
from bsud.exports.ganesha_dbus import Bus, IoStats, NotRunning
from bsud.exports.ganesha_server import GaneshaServer
from bsud.exports.settings import GaneshaSettings, NfsSettings
from bsud.exports.nfs import NfsExport, check_nfs_option, describe
from bsud.logs import get_logger
from bsud.runner import Runner

log = get_logger("bsud.exports")


#: The exports(5) words bsud translates into an nfs-ganesha EXPORT block (Access_Type, Squash, Anonymous_Uid/Gid,
#: SecType, PrivilegedPort); ``sync`` and ``no_subtree_check`` are what ganesha does anyway.
GANESHA_OPTIONS = frozenset({"rw", "ro", "sync", "no_subtree_check", "root_squash", "no_root_squash", "all_squash",
                             "no_all_squash", "anonuid", "anongid", "sec", "secure", "insecure"})


def check(export: NfsExport) -> list[tuple[str, str]]:
    """Beyond the nfs kind's rules: each option ganesha has a word for (the others were said by the nfs kind)."""
    return [("options", f"{o!r} has no nfs-ganesha equivalent bsud knows; remove it (or use \"server\": \"kernel\")")
            for o in export.options if o.partition("=")[0] not in GANESHA_OPTIONS and not check_nfs_option(o)]


class Ganesha(ExportKind):
    kind = "nfs-ganesha"

    def __init__(self, runner: Runner, settings: GaneshaSettings | None = None, bus: str = "SYSTEM",
                 server: GaneshaServer | None = None) -> None:
        super().__init__(runner)
        self.settings = settings or GaneshaSettings()
        self.server = server or GaneshaServer(bus)
        self.bus = Bus(self.server.bus)
        self.heartbeat = self.server.heartbeat

    @classmethod
    def make(cls, runner: Runner, services: Services) -> Ganesha:
        return cls(runner, (services.nfs or NfsSettings()).ganesha, server=services.ganesha)

    def file(self, drive: str) -> Path:
        return Path(self.settings.exports_dir) / f"{drive}.conf"

    def readiness(self) -> tuple[bool, str]:
        age = self.heartbeat.age()
        limit = self.settings.heartbeat_timeout_seconds
        process = self.server.managed if self.settings.managed else None
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
            return {describe(e): asdict(self.bus.io(export_id(drive, e.path))) for e in exports}
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


PLUGIN = ExportPlugin(name="nfs-ganesha", exporter=Ganesha, check=check,
                      no_ha="the gateway's NFS is the kernel server (nfsserver, exportfs agents); remove "
                            "\"server\": \"ganesha\"")
