"""Sharing a drive: each export kind is one module here and one line in :data:`KINDS`."""

from __future__ import annotations

from bsud.config.exports import NfsSettings
from bsud.exports.base import ExportKind, ExportState
from bsud.exports.files import ExportError, replace_file
from bsud.exports.ganesha import Ganesha
from bsud.exports.iscsi import Lio
from bsud.exports.nfs import NfsKernel
from bsud.exports.nvmeof import NvmetTcp
from bsud.exports.smb import Samba
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
