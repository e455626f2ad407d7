"""NFS through the kernel server: bsud owns ``/etc/exports.d/bsud-<drive>.exports`` and nothing else, applies it
with ``exportfs -ra`` and checks ``exportfs -s`` lists each path. Each export has a stable ``fsid`` (a UUID
derived from the drive and the path), so clients keep their file handles across restarts and scale events.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from bsud.config.exports import NfsExport
from bsud.exports.base import HEADER, ExportKind, ExportState, directory_of
from bsud.exports.files import ExportError, replace_file
from bsud.runner import CommandError, Runner

#: Namespace of the fsid UUIDs (fixed: changing it would change every export's file handles).
FSID_NAMESPACE = uuid.UUID("6f1b4a52-9c2e-4b43-8d58-3f0f8a1e2c71")


def fsid(drive: str, path: str) -> str:
    return str(uuid.uuid5(FSID_NAMESPACE, f"{drive}/{path.strip('/')}"))


def render(drive: str, mount_path: str, exports: list[NfsExport]) -> str | None:
    """The exports(5) file for a drive (None: no NFS export)."""
    if not exports:
        return None
    lines = [HEADER.format(drive=drive)]
    for export in exports:
        options = ",".join([*export.options, f"fsid={fsid(drive, export.path)}"])
        clients = " ".join(f"{client}({options})" for client in export.clients)
        lines.append(f"{directory_of(mount_path, export)} {clients}\n")
    return "".join(lines)


def parse_exportfs(text: str) -> dict[str, list[str]]:
    """``exportfs -s`` → {path: [client(options), ...]} (a long path puts its clients on the next line)."""
    listed: dict[str, list[str]] = {}
    path = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            parts = line.split()
            path = parts[0]
            listed.setdefault(path, []).extend(parts[1:])
        elif path is not None:
            listed[path].extend(line.split())
    return listed


class NfsKernel(ExportKind):
    kind = "nfs"
    tools = ("exportfs",)

    def __init__(self, runner: Runner, exports_dir: Path = Path("/etc/exports.d"),
                 nfsd_dir: Path = Path("/proc/fs/nfsd")) -> None:
        super().__init__(runner)
        self.exports_dir = exports_dir
        self.nfsd_dir = nfsd_dir

    def file(self, drive: str) -> Path:
        return self.exports_dir / f"bsud-{drive}.exports"

    def server(self) -> str:
        try:
            threads = int((self.nfsd_dir / "threads").read_text().strip() or 0)
        except (OSError, ValueError):
            return "not running (no nfsd: start nfs-server, package nfs-kernel-server)"
        return f"nfsd: {threads} threads" if threads else "not running (nfsd has no threads: start nfs-server)"

    def listed(self) -> dict[str, list[str]]:
        return parse_exportfs(self.runner.run(["exportfs", "-s"], quiet=True).stdout)

    def _serves(self, drive: str, mount_path: str, exports: list[NfsExport]) -> str | None:
        """What the server does not list as wanted, or None."""
        listed = self.listed()
        for export in exports:
            path = directory_of(mount_path, export)
            wanted = f"fsid={fsid(drive, export.path)}"
            clients = listed.get(path)
            if not clients:
                return f"{path} is not exported"
            if not all(any(c.startswith(f"{client}(") and wanted in c for c in clients) for client in export.clients):
                return f"{path} is not exported to {', '.join(export.clients)} with {wanted}"
        return None

    def observe(self, drive: str, mount_path: str, exports: list[NfsExport]) -> ExportState:
        path = self.file(drive)
        current = path.read_text() if path.exists() else None
        wanted = render(drive, mount_path, exports)
        detail = ""
        if current != wanted:
            detail = f"{path} " + ("is missing" if current is None else "differs from the config")
        elif wanted is not None:
            try:
                detail = self._serves(drive, mount_path, exports) or ""
            except CommandError as exc:
                detail = f"exportfs -s failed: {exc}"
        return ExportState(self.kind, len(exports), applied=not detail, present=current is not None,
                           server=self.server(), detail=detail)

    def _reload(self) -> None:
        self.runner.run(["exportfs", "-ra"])

    def apply(self, drive: str, mount_path: str, exports: list[NfsExport]) -> bool:
        if not os.path.ismount(mount_path):
            raise ExportError(f"drive {drive!r} is not mounted on {mount_path}; not exporting it")
        for export in exports:
            Path(directory_of(mount_path, export)).mkdir(parents=True, exist_ok=True, mode=0o755)

        def verify() -> None:
            missing = self._serves(drive, mount_path, exports)
            if missing:
                raise ExportError(f"after exportfs -ra, {missing}")

        # drift: the file is right but the server forgot it (exportfs -u, a restart)
        return replace_file(self.file(drive), render(drive, mount_path, exports), apply=self._reload, verify=verify,
                            drifted=lambda: bool(self._serves(drive, mount_path, exports)))

    def withdraw(self, drive: str) -> bool:
        path = self.file(drive)
        if not path.exists():
            return False
        ours = {line.split()[0] for line in path.read_text().splitlines() if line.strip() and line[0] != "#"}

        def verify() -> None:
            left = sorted(ours & set(self.listed()))
            if left:
                raise ExportError(f"after exportfs -ra, still exported: {', '.join(left)}")

        return replace_file(path, None, apply=self._reload, verify=verify)
