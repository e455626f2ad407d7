"""SMB through Samba: bsud owns ``/etc/samba/bsud.d/<drive>.conf`` (the drive's shares) and
``/etc/samba/bsud.conf`` (one ``include =`` per such file), and adds one line, ``include = /etc/samba/bsud.conf``,
to ``smb.conf`` once (the file backed up first; the rest of it is never rewritten).

A change is checked by ``testparm -s`` before it replaces anything, along with the shares defined elsewhere (a
share name already in ``smb.conf`` or another drive's file is refused, never merged into), applied with
``smbcontrol all reload-config`` and verified by listing the shares anonymously (``smbclient -L``), or, where
anonymous listing is refused, from the configuration smbd loads.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from typing import Literal

from bsud.exports.base import HEADER, ExportKind, ExportPlugin, ExportState, directory_of
from bsud.exports.files import ExportError, replace_file, write_atomically
from bsud.exports.model import ExportModel
from bsud.logs import get_logger
from bsud.runner import Runner

log = get_logger("bsud.exports")


class SmbExport(ExportModel):
    kind: Literal["smb"]
    share: str
    read_only: bool = False
    guest: bool = False
    valid_users: tuple[str, ...] = ()


SMB_SHARE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,79}")
SMB_RESERVED_SHARES = frozenset({"global", "homes", "printers", "print$", "ipc$"})
SMB_USER_RE = re.compile(r"@?[A-Za-z0-9_][A-Za-z0-9_.\\-]{0,63}")


def check(export: SmbExport) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not SMB_SHARE_RE.fullmatch(export.share) or export.share.lower() in SMB_RESERVED_SHARES:
        problems.append(("share", f"{export.share!r} is not a usable share name (1 to 80 letters, digits, "
                                  "space . _ -; not global, homes, printers)"))
    problems += [("valid-users", f"{u!r} is not a user or @group name") for u in export.valid_users
                 if not SMB_USER_RE.fullmatch(u)]
    if export.guest and export.valid_users:
        problems.append(("guest", "a guest share has no valid-users; give one or the other"))
    return problems

INDEX_HEADER = "# Written by bsud: one include per drive shared over SMB (/etc/samba/bsud.d). Do not edit.\n"
SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]\s*$")
#: How long smbd may take to load a new configuration after reload-config (it is asynchronous).
RELOAD_SECONDS = 15.0
#: One SMB change at a time: the index file is shared by every drive's worker.
_LOCK = threading.Lock()


def render(drive: str, mount_path: str, exports: list[SmbExport]) -> str | None:
    """The drive's share definitions, in smb.conf(5) form (None: no SMB export)."""
    if not exports:
        return None
    out = [HEADER.format(drive=drive)]
    for export in exports:
        out.append(f"\n[{export.share}]\n")
        out.append(f"   path = {directory_of(mount_path, export)}\n")
        out.append(f"   read only = {'yes' if export.read_only else 'no'}\n")
        out.append(f"   guest ok = {'yes' if export.guest else 'no'}\n")
        if export.valid_users:
            out.append(f"   valid users = {' '.join(export.valid_users)}\n")
        out.append(f"   comment = bsud drive {drive}\n")
    return "".join(out)


def sections(text: str) -> list[str]:
    """The section names of an smb.conf text, lower-cased (Samba's share names are case-insensitive)."""
    return [m.group(1).strip().lower() for line in text.splitlines() if (m := SECTION_RE.match(line))]


def parse_share_list(text: str) -> list[str]:
    """``smbclient -g -L`` → the disk shares' names (``Disk|name|comment`` lines)."""
    return [parts[1] for line in text.splitlines() if (parts := line.split("|")) and len(parts) >= 2
            and parts[0] == "Disk"]


def has_include(text: str, target: Path) -> bool:
    return any(re.fullmatch(rf"\s*include\s*=\s*{re.escape(str(target))}\s*", line) for line in text.splitlines())


class Samba(ExportKind):
    kind = "smb"
    tools = {"testparm": "samba-common-bin", "smbcontrol": "samba-common-bin", "smbclient": "smbclient"}

    def __init__(self, runner: Runner, samba_dir: Path = Path("/etc/samba")) -> None:
        super().__init__(runner)
        self.samba_dir = samba_dir
        self.smb_conf = samba_dir / "smb.conf"
        self.index = samba_dir / "bsud.conf"
        self.drives_dir = samba_dir / "bsud.d"

    def file(self, drive: str) -> Path:
        return self.drives_dir / f"{drive}.conf"

    # -- what the system has -----------------------------------------------------------------------

    def smbd_runs(self) -> bool:
        done = self.runner.run(["smbcontrol", "smbd", "ping"], timeout=30, check=False, quiet=True)
        return done.returncode == 0 and "PONG" in done.stdout

    def server(self) -> str:
        return "smbd answers" if self.smbd_runs() else "not running (start smbd, package samba)"

    def index_text(self) -> str:
        names = sorted(p for p in self.drives_dir.glob("*.conf")) if self.drives_dir.is_dir() else []
        return INDEX_HEADER + "".join(f"include = {p}\n" for p in names)

    def listed(self) -> list[str] | None:
        """The disk shares smbd lists to an anonymous client; None when it refuses anonymous listing."""
        done = self.runner.run(["smbclient", "-N", "-g", "-L", "//127.0.0.1"], timeout=60, check=False, quiet=True)
        if done.returncode != 0:
            if re.search(r"NT_STATUS_(ACCESS_DENIED|LOGON_FAILURE)", done.stdout + done.stderr):
                return None
            raise ExportError(f"smbclient -L //127.0.0.1 failed: {(done.stderr or done.stdout).strip()[-300:]}")
        return parse_share_list(done.stdout)

    def loaded(self) -> list[str]:
        """The share names in the configuration smbd loads (``testparm -s``)."""
        return sections(self.runner.run(["testparm", "-s", str(self.smb_conf)], timeout=60, quiet=True).stdout)

    def _serves(self, exports: list[SmbExport]) -> str | None:
        """What smbd does not list as wanted, or None."""
        try:
            listed = self.listed()
        except ExportError as exc:
            return str(exc)
        names = {n.lower() for n in (listed if listed is not None else self.loaded())}
        missing = [e.share for e in exports if e.share.lower() not in names]
        return f"smbd does not list the share{'s' if len(missing) > 1 else ''} {', '.join(missing)}" if missing \
            else None

    def observe(self, drive: str, mount_path: str, exports: list[SmbExport]) -> ExportState:
        path = self.file(drive)
        current = path.read_text() if path.exists() else None
        if current is None and not exports:
            return ExportState(self.kind, 0, applied=True, present=False, server="")  # runs nothing
        wanted = render(drive, mount_path, exports)
        detail = ""
        if current != wanted:
            detail = f"{path} " + ("is missing" if current is None else "differs from the config")
        elif wanted is not None:
            if not self.smb_conf.exists() or not has_include(self.smb_conf.read_text(), self.index):
                detail = f"{self.smb_conf} does not include {self.index}"
            elif not self.index.exists() or f"include = {path}\n" not in self.index.read_text():
                detail = f"{self.index} does not include {path}"
            else:
                detail = self._serves(exports) or ""
        return ExportState(self.kind, len(exports), applied=not detail, present=current is not None,
                           server=self.server(), detail=detail)

    # -- changing it --------------------------------------------------------------------------------

    def _validate(self, drive: str, exports: list[SmbExport]):
        def validate(temp: Path) -> None:
            done = self.runner.run(["testparm", "-s", str(temp)], timeout=60, check=False, quiet=True)
            if done.returncode != 0:
                raise ExportError(f"testparm: {(done.stderr or done.stdout).strip()[-300:]}")
            # A share defined elsewhere too would be merged with ours by Samba: refuse instead.
            elsewhere: dict[str, str] = {}
            others = [self.smb_conf, *(p for p in sorted(self.drives_dir.glob("*.conf")) if p != self.file(drive))] \
                if self.drives_dir.is_dir() else [self.smb_conf]
            for other in others:
                if other.exists():
                    for name in sections(other.read_text()):
                        elsewhere.setdefault(name, str(other))
            clashes = [f"[{e.share}] is already defined in {elsewhere[e.share.lower()]}" for e in exports
                       if e.share.lower() in elsewhere]
            if clashes:
                raise ExportError("; ".join(clashes) + " (choose another share name)")
        return validate

    def _reload(self) -> None:
        done = self.runner.run(["smbcontrol", "all", "reload-config"], timeout=60, check=False)
        if done.returncode != 0:
            raise ExportError(f"smbcontrol all reload-config failed: {(done.stderr or done.stdout).strip()[-300:]}")

    def _wait_served(self, exports: list[SmbExport], gone: list[str] = ()) -> None:
        """Poll until smbd lists every wanted share and none of ``gone`` (a reload is asynchronous)."""
        deadline = time.monotonic() + RELOAD_SECONDS
        while True:
            problem = self._serves(exports)
            if problem is None and gone:
                listed = self.listed()
                names = {n.lower() for n in (listed if listed is not None else self.loaded())}
                left = [g for g in gone if g.lower() in names]
                problem = f"smbd still lists {', '.join(left)}" if left else None
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise ExportError(f"after smbcontrol all reload-config, {problem}")
            time.sleep(0.5)

    def _ensure_included(self) -> None:
        """The index file exists and smb.conf includes it (the one line bsud adds to smb.conf, once)."""
        if not self.index.exists():
            write_atomically(self.index, self.index_text())
        text = self.smb_conf.read_text() if self.smb_conf.exists() else ""
        if has_include(text, self.index):
            return
        backup = self.smb_conf.with_name("smb.conf.before-bsud")
        if self.smb_conf.exists() and not backup.exists():
            write_atomically(backup, text, os.stat(self.smb_conf).st_mode & 0o7777)
        line = f"\n# Added by bsud (its shares, one file per drive under {self.drives_dir}):\ninclude = {self.index}\n"
        candidate = text + ("" if text.endswith("\n") or not text else "\n") + line
        mode = os.stat(self.smb_conf).st_mode & 0o7777 if self.smb_conf.exists() else 0o644
        temp = self.smb_conf.with_name(".smb.conf.bsud-new")
        write_atomically(temp, candidate, mode)
        done = self.runner.run(["testparm", "-s", str(temp)], timeout=60, check=False, quiet=True)
        if done.returncode != 0:
            temp.unlink(missing_ok=True)
            raise ExportError(f"{self.smb_conf} does not validate (testparm -s) with bsud's include line added; "
                              f"fix it: {(done.stderr or done.stdout).strip()[-300:]}")
        os.replace(temp, self.smb_conf)
        log.info("smb.conf now includes bsud's shares", file=str(self.smb_conf), include=str(self.index),
                 backup=str(backup))

    def _write_index(self) -> None:
        if not self.index.exists() or self.index.read_text() != self.index_text():
            write_atomically(self.index, self.index_text())

    def apply(self, drive: str, mount_path: str, exports: list[SmbExport]) -> bool:
        if not os.path.ismount(mount_path):
            raise ExportError(f"drive {drive!r} is not mounted on {mount_path}; not sharing it")
        if not self.smbd_runs():
            raise ExportError("smbd is not running (start it: systemctl start smbd; package samba)")
        for export in exports:
            Path(directory_of(mount_path, export)).mkdir(parents=True, exist_ok=True, mode=0o755)
        with _LOCK:
            self.drives_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
            self._ensure_included()
            path = self.file(drive)
            before = sections(path.read_text()) if path.exists() else []
            gone = [s for s in before if s not in {e.share.lower() for e in exports}]

            def apply() -> None:
                self._write_index()
                self._reload()

            # drift: the files are right but smbd does not serve them (restarted, includes edited)
            return replace_file(path, render(drive, mount_path, exports), apply=apply,
                                verify=lambda: self._wait_served(exports, gone),
                                validate=self._validate(drive, exports), drifted=lambda: bool(self._serves(exports)))

    def withdraw(self, drive: str) -> bool:
        path = self.file(drive)
        if not path.exists():
            return False
        with _LOCK:
            ours = sections(path.read_text())

            def apply() -> None:
                self._write_index()
                try:
                    self._reload()
                except ExportError:
                    if self.smbd_runs():
                        raise  # smbd runs and did not take it; stopped, it serves nothing

            def verify() -> None:
                if self.smbd_runs():
                    self._wait_served([], ours)

            return replace_file(path, None, apply=apply, verify=verify)


# No OCF agent serves SMB in the gateway: an ``ha`` drive refuses it (the registry says so).
PLUGIN = ExportPlugin(name="smb", exporter=Samba, model=SmbExport, describe=lambda e: f"smb:{e.share}", check=check,
                      identities=lambda drive, e: [("share name", e.share.lower())])
