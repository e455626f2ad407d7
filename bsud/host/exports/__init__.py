"""Sharing a drive: each export kind is one module here and one line in :data:`KINDS`."""

from __future__ import annotations

from bsud.host.exports.base import ExportKind, ExportState
from bsud.host.exports.files import ExportError, replace_file
from bsud.host.exports.nfs import NfsKernel

#: The ``kind`` of a config's export → the class that applies it.
KINDS: dict[str, type[ExportKind]] = {
    "nfs": NfsKernel,
}

__all__ = ["KINDS", "ExportError", "ExportKind", "ExportState", "NfsKernel", "replace_file"]
