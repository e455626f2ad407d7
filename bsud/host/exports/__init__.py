"""Sharing a drive: each export kind is one module here and one line in :data:`KINDS`."""

from __future__ import annotations

from bsud.config.exports import NfsSettings
from bsud.host.exports.base import ExportKind, ExportState
from bsud.host.exports.files import ExportError, replace_file
from bsud.host.exports.ganesha import Ganesha
from bsud.host.exports.iscsi import Lio
from bsud.host.exports.nfs import NfsKernel
from bsud.host.exports.nvmeof import NvmetTcp
from bsud.host.exports.smb import Samba
from bsud.runner import Runner

#: An export's ``exporter`` (its ``kind``, or ``nfs-ganesha`` for an nfs export served by ganesha) → its class.
KINDS: dict[str, type[ExportKind]] = {
    "nfs": NfsKernel,
    "nfs-ganesha": Ganesha,
    "smb": Samba,
    "iscsi": Lio,
    "nvmeof": NvmetTcp,
}


def make_exporters(runner: Runner, nfs: NfsSettings | None = None) -> dict[str, ExportKind]:
    """One of each kind for a drive (the ganesha one with the config's ``nfs.ganesha`` settings)."""
    return {name: Ganesha(runner, (nfs or NfsSettings()).ganesha) if cls is Ganesha else cls(runner)
            for name, cls in KINDS.items()}


__all__ = ["KINDS", "ExportError", "ExportKind", "ExportState", "Ganesha", "Lio", "NfsKernel", "NvmetTcp", "Samba",
           "make_exporters", "replace_file"]
