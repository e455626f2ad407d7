"""NFS through the kernel server: bsud owns ``/etc/exports.d/bsud-<drive>.exports`` and nothing else, applies it
with ``exportfs -ra`` and checks ``exportfs -s`` lists each path. Each export has a stable ``fsid`` (a UUID
derived from the drive and the path), so clients keep their file handles across restarts and scale events.

The ``nfs`` kind: its config (also what nfs-ganesha serves, ``"server": "ganesha"``: ``bsud.exports.ganesha``),
its rules, and the gateway's agents (nfsserver, one exportfs per client).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field

from bsud.exports.base import HEADER, ExportKind, ExportPlugin, ExportState, HaAgents, directory_of
from bsud.exports.files import ExportError, replace_file
from bsud.exports.model import ExportModel, check_client
from bsud.ha.agent import Agent, Gateway, heartbeat
from bsud.runner import CommandError, Runner

NFS_PORT = 2049
#: Namespace of the fsid UUIDs (fixed: changing it would change every export's file handles).
FSID_NAMESPACE = uuid.UUID("6f1b4a52-9c2e-4b43-8d58-3f0f8a1e2c71")


class NfsExport(ExportModel):
    kind: Literal["nfs"]
    clients: tuple[str, ...] = Field(min_length=1)
    options: tuple[str, ...] = ("rw", "sync", "root_squash", "no_subtree_check")
    #: ``kernel``: the kernel's NFS server (exportfs); ``ganesha``: nfs-ganesha, over D-Bus.
    server: Literal["kernel", "ganesha"] = "kernel"

    @property
    def exporter(self) -> str:
        return "nfs-ganesha" if self.server == "ganesha" else "nfs"


#: Option words of exports(5) a user may give; ``fsid`` is bsud's (stable per drive and path).
NFS_OPTIONS = frozenset({
    "rw", "ro", "sync", "async", "secure", "insecure", "wdelay", "no_wdelay", "hide", "nohide", "crossmnt",
    "subtree_check", "no_subtree_check", "insecure_locks", "no_auth_nlm", "secure_locks", "auth_nlm",
    "root_squash", "no_root_squash", "all_squash", "no_all_squash", "mountpoint", "mp", "no_acl",
})
NFS_VALUED_OPTIONS = {
    "anonuid": re.compile(r"\d{1,10}"),
    "anongid": re.compile(r"\d{1,10}"),
    "sec": re.compile(r"(sys|krb5|krb5i|krb5p)(:(sys|krb5|krb5i|krb5p))*"),
}


def check_nfs_option(option: str) -> str | None:
    word, _, value = option.partition("=")
    if word == "fsid":
        return "fsid is set by bsud (stable per drive and path); remove it"
    if word in NFS_VALUED_OPTIONS:
        return None if value and NFS_VALUED_OPTIONS[word].fullmatch(value) else f"{option!r}: bad value"
    if word in NFS_OPTIONS and not value:
        return None
    return f"{option!r} is not an exports(5) option bsud accepts"


def check(export: NfsExport) -> list[tuple[str, str]]:
    problems = [("clients", w) for w in map(check_client, export.clients) if w]
    problems += [("options", w) for w in map(check_nfs_option, export.options) if w]
    if "rw" in export.options and "ro" in export.options:
        problems.append(("options", "give rw or ro, not both"))
    return problems


def describe(export: NfsExport) -> str:
    return f"nfs:{export.path or '/'}"


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
    tools = {"exportfs": "nfs-kernel-server"}

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


# -- a highly available gateway: the nfsserver agent (its state on a filesystem of its own), one exportfs per client

def ha_check(ha) -> list[tuple[str, str]]:
    if ha.cluster_private_device and ha.cluster_private_mount:
        return []
    return [("cluster-private-device", "NFS needs cluster-private-device and cluster-private-mount (the NFS server's "
                                       "state moves with the service)")]


def ha_prepare(gw: Gateway, exports: list[NfsExport]) -> list[Agent]:
    if not (exports and gw.ha.cluster_private_device and gw.ha.cluster_private_mount):
        return []
    return [heartbeat("Filesystem", "fs_cluster_private", ("device", gw.ha.cluster_private_device),
                      ("directory", gw.ha.cluster_private_mount), ("fstype", "ext4"), ("run_fsck", "no"))]


def ha_serve(gw: Gateway, exports: list[NfsExport]) -> list[Agent]:
    if not exports:
        return []
    agents = [heartbeat("nfsserver", "nfsserver", ("nfs_shared_infodir", f"{gw.ha.cluster_private_mount}/nfs"),
                        ("nfs_ip", gw.ip))]
    for i, export in enumerate(exports):
        for j, client in enumerate(export.clients):
            agents.append(heartbeat("exportfs", f"export{i}_{j}", ("clientspec", client),
                                    ("directory", directory_of(gw.mount, export)),
                                    ("fsid", fsid(gw.drive, export.path)), ("options", ",".join(export.options))))
    return agents


PLUGIN = ExportPlugin(
    name="nfs", exporter=NfsKernel, model=NfsExport, describe=describe, check=check,
    identities=lambda drive, e: [("NFS export of the same directory", f"{drive}/{e.path.strip('/')}")],
    ha=HaAgents(port=lambda e: NFS_PORT, serve=ha_serve, prepare=ha_prepare, check=ha_check))
