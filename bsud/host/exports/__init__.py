"""Sharing a drive: each export kind is one module here and one line in :data:`KINDS`."""

from __future__ import annotations

from bsud.host.exports.base import ExportKind, ExportState
from bsud.host.exports.files import ExportError, replace_file
from bsud.host.exports.iscsi import Lio
from bsud.host.exports.nfs import NfsKernel
from bsud.host.exports.nvmeof import NvmetTcp
from bsud.host.exports.smb import Samba

#: The ``kind`` of a config's export → the class that applies it.
KINDS: dict[str, type[ExportKind]] = {
    "nfs": NfsKernel,
    "smb": Samba,
    "iscsi": Lio,
    "nvmeof": NvmetTcp,
}

__all__ = ["KINDS", "ExportError", "ExportKind", "ExportState", "Lio", "NfsKernel", "NvmetTcp", "Samba", "replace_file"]
