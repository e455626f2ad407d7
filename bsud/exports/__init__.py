"""Sharing a drive: the export kinds, a plug-in family. Each kind is one module that declares itself once (an
:class:`~bsud.exports.base.ExportPlugin`: config model, checks, identities, host exporter with its tools, HA
agents) and one name in :data:`KIND_MODULES`; everything else here is derived from that list — the config's union
of export models, the kinds table, each export's checks and clashes, the tools a drive's exports need, the HA
refusal.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Annotated, Any, Union, get_args

from pydantic import Field

from bsud.exports.base import ExportKind, ExportPlugin, ExportState, HaAgents, Services
from bsud.exports.files import ExportError, replace_file
from bsud.exports.settings import GaneshaSettings, NfsSettings
from bsud.exports.model import ExportModel, check_path
from bsud.runner import Runner

#: The export kinds: ``bsud.exports.<name>`` each, which declares its ``PLUGIN``. A gateway starts their agents in
#: this order. Adding a kind is its module and its name here.
KIND_MODULES = ("nfs", "ganesha", "smb", "iscsi", "nvmeof")
#: Every export kind, by its exporter's name (an export's ``exporter``), in :data:`KIND_MODULES` order.
KINDS: dict[str, ExportPlugin] = {
    plugin.name: plugin for plugin in (importlib.import_module(f"bsud.exports.{m}").PLUGIN for m in KIND_MODULES)}

#: Every ``exporter`` an export may name.
EXPORTERS = tuple(KINDS)
#: The ``kind`` of an export (its config's discriminator) → its model.
EXPORT_KINDS: dict[str, type[ExportModel]] = {
    get_args(p.model.model_fields["kind"].annotation)[0]: p.model for p in KINDS.values() if p.model is not None}
#: A drive's ``exports`` entry: one of the models, told apart by ``kind``.
Export = Annotated[Union[tuple(EXPORT_KINDS.values())], Field(discriminator="kind")]  # type: ignore  # noqa: UP007


def _model_plugin(export: Any) -> ExportPlugin:
    return next(p for p in KINDS.values() if p.model is type(export))


def export_name(export: Any) -> str:
    """What names an export in messages and the status: ``nfs:sub/dir``, ``smb:share``, ``iscsi:<iqn>``…"""
    describe = _model_plugin(export).describe
    return describe(export) if describe else str(export.kind)


def check_export(export: Any) -> list[tuple[str, str]]:
    """(key, why) for each problem of one export: its path, its model's rules, then its server's (nfs-ganesha)."""
    why = check_path(export.path)
    problems = [("path", why)] if why else []
    model = _model_plugin(export)
    problems += model.check(export)
    server = KINDS[export.exporter]
    if server is not model:
        problems += server.check(export)
    return problems


def export_identities(drive: str, export: Any) -> list[tuple[str, str]]:
    """What no two exports (of any drives) may share: an NFS path of a drive, an SMB share name, an IQN, an NQN,
    an NVMe-oF address and port (each export owns its port: withdrawing it never cuts another)."""
    return _model_plugin(export).identities(drive, export)


def by_exporter(exports: Iterable[Any]) -> dict[str, list[Any]]:
    """A drive's exports grouped by their exporter, in :data:`KINDS` order (only kinds that have some)."""
    exports = list(exports)
    return {name: found for name in KINDS if (found := [e for e in exports if e.exporter == name])}


def ha_problems(ha: Any, exports: Iterable[Any]) -> list[tuple[str, str]]:
    """(key under ``ha``, why) for a highly available drive's exports: a kind without HA agents is refused (its
    name in the line), a kind with them says what it needs of the ``ha`` section."""
    problems: list[tuple[str, str]] = []
    for name in by_exporter(exports):
        plugin = KINDS[name]
        if plugin.ha is None:
            problems.append(("", plugin.no_ha or f"{name} exports have no OCF agent in the gateway; remove them or "
                                                 "the ha section"))
    for name in by_exporter(exports):
        agents = KINDS[name].ha
        problems += agents.check(ha) if agents is not None else []
    return problems


def export_tools(exporters: Iterable[str]) -> dict[str, str]:
    """The tools the given exporters run → their Debian packages."""
    return {tool: package for name in exporters for tool, package in KINDS[name].exporter.tools.items()}


def make_exporters(runner: Runner, nfs: NfsSettings | None = None, ganesha: Any = None) -> dict[str, ExportKind]:
    """One of each kind for a drive (the ganesha one with the config's ``nfs.ganesha`` settings and the daemon's
    nfs-ganesha, ``ganesha``; None: its own)."""
    services = Services(nfs, ganesha)
    return {name: plugin.exporter.make(runner, services) for name, plugin in KINDS.items()}


__all__ = ["EXPORTERS", "EXPORT_KINDS", "KINDS", "KIND_MODULES", "Export", "ExportError", "ExportKind", "ExportModel",
           "ExportPlugin", "ExportState", "GaneshaSettings", "HaAgents", "NfsSettings", "by_exporter", "check_export",
           "export_identities", "export_name", "export_tools", "ha_problems", "make_exporters", "replace_file"]
