"""A drive's ``exports``: how it is shared (NFS, SMB, iSCSI, NVMe-oF) — the schema of each kind and the rules
the schema cannot say (names, IQN/NQN formats, client addresses, option words, ports), one line per problem.

Pure: no I/O. The host side that applies them is ``bsud.exports``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Settings(BaseModel):
    model_config = ConfigDict(alias_generator=_kebab, populate_by_name=True, extra="forbid", frozen=True)


class _Export(_Settings):
    #: A directory of the drive to share (relative to its mount path; empty: the whole drive).
    path: str = ""

    @property
    def exporter(self) -> str:
        """The name of the export kind that applies it (``bsud.exports.KINDS``): its ``kind`` by default."""
        return str(getattr(self, "kind"))


class NfsExport(_Export):
    kind: Literal["nfs"]
    clients: tuple[str, ...] = Field(min_length=1)
    options: tuple[str, ...] = ("rw", "sync", "root_squash", "no_subtree_check")
    #: ``kernel``: the kernel's NFS server (exportfs); ``ganesha``: nfs-ganesha, over D-Bus.
    server: Literal["kernel", "ganesha"] = "kernel"

    @property
    def exporter(self) -> str:
        return "nfs-ganesha" if self.server == "ganesha" else "nfs"


class SmbExport(_Export):
    kind: Literal["smb"]
    share: str
    read_only: bool = False
    guest: bool = False
    valid_users: tuple[str, ...] = ()


class Chap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(min_length=1)
    password: SecretStr


class IscsiExport(_Export):
    kind: Literal["iscsi"]
    iqn: str
    lun_size_gib: int = Field(ge=1)
    initiators: tuple[str, ...] = Field(min_length=1)
    chap: Chap | None = None


class NvmeofExport(_Export):
    kind: Literal["nvmeof"]
    nqn: str
    size_gib: int = Field(ge=1)
    hosts: tuple[str, ...] = Field(min_length=1)
    transport: Literal["tcp"] = "tcp"
    address: str
    port: int = Field(default=4420, ge=1, le=65535)


class GaneshaSettings(_Settings):
    """nfs-ganesha, the NFS server of the exports with ``"server": "ganesha"``: the system's service, or one process
    bsud runs and keeps running itself (``managed``); administered over D-Bus either way."""

    #: Where bsud writes each drive's EXPORT blocks (``<drive>.conf``), which it hands to ganesha over D-Bus.
    exports_dir: str = "/etc/ganesha/bsud.d"
    #: No heartbeat signal from ganesha for this long: not ready (said in the status); a managed one is restarted.
    heartbeat_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    #: bsud runs ``ganesha.nfsd -F`` itself (once the system D-Bus and rpcbind run), restarts it with backoff when it
    #: exits or stops sending heartbeats, and stops it when bsud stops. False: the system's nfs-ganesha service.
    managed: bool = False
    #: The managed process's main configuration (NFS_CORE_PARAM, NFSV4, LOG…: the operator's; exports come over D-Bus).
    config_file: str = "/etc/ganesha/ganesha.conf"
    #: The managed process's log (``-L``) and pid file (``-p``).
    log_file: str = "/var/log/ganesha/ganesha.log"
    pid_file: str = "/run/ganesha/ganesha.pid"
    #: The longest wait between two restarts of a managed process that keeps failing (1, 2, 4… seconds up to this).
    restart_backoff_max_seconds: float = Field(default=60.0, ge=1, le=3600)


class NfsSettings(_Settings):
    ganesha: GaneshaSettings = GaneshaSettings()


Export = Annotated[NfsExport | SmbExport | IscsiExport | NvmeofExport, Field(discriminator="kind")]
#: Every ``exporter`` an export may name (``bsud.exports.KINDS`` has one class for each).
EXPORTERS = ("nfs", "nfs-ganesha", "smb", "iscsi", "nvmeof")
#: The ``kind`` of an export → its model.
EXPORT_KINDS: dict[str, type[_Export]] = {"nfs": NfsExport, "smb": SmbExport, "iscsi": IscsiExport,
                                          "nvmeof": NvmeofExport}

# --- rules --------------------------------------------------------------------------------------

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
#: The exports(5) words bsud translates into an nfs-ganesha EXPORT block (Access_Type, Squash, Anonymous_Uid/Gid,
#: SecType, PrivilegedPort); ``sync`` and ``no_subtree_check`` are what ganesha does anyway.
GANESHA_OPTIONS = frozenset({"rw", "ro", "sync", "no_subtree_check", "root_squash", "no_root_squash", "all_squash",
                             "no_all_squash", "anonuid", "anongid", "sec", "secure", "insecure"})
#: iqn.YYYY-MM.reversed.domain[:anything] (RFC 3720 §3.2.6.3.1), lower case.
IQN_RE = re.compile(r"iqn\.\d{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
                    r"(:[a-z0-9.:_-]+)?")
#: nqn.YYYY-MM.reversed.domain:anything (NVMe base spec 4.5), at most 223 bytes.
NQN_RE = re.compile(r"nqn\.\d{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
                    r":[A-Za-z0-9.:_-]+")
HOST_RE = re.compile(r"[A-Za-z0-9*?]([A-Za-z0-9*?.-]{0,251}[A-Za-z0-9*?])?")
SMB_SHARE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,79}")
SMB_RESERVED_SHARES = frozenset({"global", "homes", "printers", "print$", "ipc$"})
SMB_USER_RE = re.compile(r"@?[A-Za-z0-9_][A-Za-z0-9_.\\-]{0,63}")


def check_path(path: str) -> str | None:
    """Why a drive-relative export path cannot be used, or None."""
    if path.startswith("/"):
        return f"{path!r} must be relative to the drive's mount path (no leading /; empty: the whole drive)"
    if any(ch.isspace() or ord(ch) < 32 for ch in path) or any(p in (".", "..") for p in path.split("/")):
        return f"{path!r} must not hold spaces, control characters, '.' or '..'"
    return None


def check_client(client: str) -> str | None:
    """exports(5) clients: an address, a CIDR, a host name (wildcards allowed) or ``*``."""
    if client == "*":
        return None
    try:
        ipaddress.ip_network(client, strict=False)
        return None
    except ValueError:
        pass
    if client.startswith("@") and HOST_RE.fullmatch(client[1:]):
        return None  # a netgroup
    if HOST_RE.fullmatch(client) and not client.replace(".", "").isdigit():
        return None
    return f"{client!r} is not an address, a network (10.0.0.0/24), a host name or *"


def check_nfs_option(option: str) -> str | None:
    word, _, value = option.partition("=")
    if word == "fsid":
        return "fsid is set by bsud (stable per drive and path); remove it"
    if word in NFS_VALUED_OPTIONS:
        return None if value and NFS_VALUED_OPTIONS[word].fullmatch(value) else f"{option!r}: bad value"
    if word in NFS_OPTIONS and not value:
        return None
    return f"{option!r} is not an exports(5) option bsud accepts"


def export_name(export: NfsExport | SmbExport | IscsiExport | NvmeofExport) -> str:
    """What names an export in messages and the status: ``nfs:sub/dir``, ``smb:share``, ``iscsi:<iqn>``…"""
    match export:
        case NfsExport():
            return f"nfs:{export.path or '/'}"
        case SmbExport():
            return f"smb:{export.share}"
        case IscsiExport():
            return f"iscsi:{export.iqn}"
        case NvmeofExport():
            return f"nvmeof:{export.nqn}"


def check_export(export: NfsExport | SmbExport | IscsiExport | NvmeofExport) -> list[tuple[str, str]]:
    """(key, why) for each problem of one export."""
    problems: list[tuple[str, str]] = []
    why = check_path(export.path)
    if why:
        problems.append(("path", why))
    match export:
        case NfsExport():
            problems += [("clients", w) for w in map(check_client, export.clients) if w]
            problems += [("options", w) for w in map(check_nfs_option, export.options) if w]
            if "rw" in export.options and "ro" in export.options:
                problems.append(("options", "give rw or ro, not both"))
            if export.server == "ganesha":
                problems += [("options", f"{o!r} has no nfs-ganesha equivalent bsud knows; remove it (or use "
                                         "\"server\": \"kernel\")") for o in export.options
                             if o.partition("=")[0] not in GANESHA_OPTIONS and not check_nfs_option(o)]
        case SmbExport():
            if not SMB_SHARE_RE.fullmatch(export.share) or export.share.lower() in SMB_RESERVED_SHARES:
                problems.append(("share", f"{export.share!r} is not a usable share name (1 to 80 letters, digits, "
                                          "space . _ -; not global, homes, printers)"))
            problems += [("valid-users", f"{u!r} is not a user or @group name") for u in export.valid_users
                         if not SMB_USER_RE.fullmatch(u)]
            if export.guest and export.valid_users:
                problems.append(("guest", "a guest share has no valid-users; give one or the other"))
        case IscsiExport():
            if not IQN_RE.fullmatch(export.iqn) or len(export.iqn) > 223:
                problems.append(("iqn", f"{export.iqn!r} is not an IQN (iqn.YYYY-MM.reversed.domain:name, lower case)"))
            problems += [("initiators", f"{i!r} is not an initiator IQN") for i in export.initiators
                         if not IQN_RE.fullmatch(i)]
            if export.chap is not None and not 12 <= len(export.chap.password.get_secret_value()) <= 16:
                problems.append(("chap.password", "must be 12 to 16 characters (what iSCSI initiators accept)"))
        case NvmeofExport():
            if not NQN_RE.fullmatch(export.nqn) or len(export.nqn.encode()) > 223:
                problems.append(("nqn", f"{export.nqn!r} is not an NQN (nqn.YYYY-MM.reversed.domain:name)"))
            problems += [("hosts", f"{h!r} is not a host NQN") for h in export.hosts
                         if not NQN_RE.fullmatch(h) and not h.startswith("nqn.2014-08.org.nvmexpress:uuid:")]
            try:
                ipaddress.ip_address(export.address)
            except ValueError:
                problems.append(("address", f"{export.address!r} is not an IP address to listen on"))
    return problems


def export_identities(drive: str, export: NfsExport | SmbExport | IscsiExport | NvmeofExport
                      ) -> list[tuple[str, str]]:
    """What no two exports (of any drives) may share: an NFS path of a drive, an SMB share name, an IQN, an NQN,
    an NVMe-oF address and port (each export owns its port: withdrawing it never cuts another)."""
    match export:
        case NfsExport():
            return [("NFS export of the same directory", f"{drive}/{export.path.strip('/')}")]
        case SmbExport():
            return [("share name", export.share.lower())]
        case IscsiExport():
            return [("iqn", export.iqn)]
        case NvmeofExport():
            return [("nqn", export.nqn), ("address and port", f"{export.address}:{export.port}")]
    return []
