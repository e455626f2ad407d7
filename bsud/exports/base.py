"""What an export kind is made of. Its module declares it once, as an :class:`ExportPlugin`: its config model, its
checks, its identities (what no two exports may share), its host side (an :class:`ExportKind`: the tools it runs
with their packages, the state it observes from the system — never remembered — and the transaction that applies
or withdraws a drive's exports of that kind) and, when a highly available gateway can serve it, its
:class:`HaAgents`. The registry (``bsud.exports``) derives the config union and every table from those.

Exports exist only while their drive is online and mounted: the planner asks for them after the mount and withdraws
them before any unmount.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from bsud.exports.model import ExportModel
from bsud.ha.agent import Agent, Gateway
from bsud.runner import Runner

if TYPE_CHECKING:
    from bsud.exports.settings import NfsSettings
    from bsud.exports.ganesha_server import GaneshaServer

#: The first line of every file bsud writes for a drive's exports.
HEADER = "# Written by bsud for drive {drive!r}; bsud rewrites it from its config (exports of the drive).\n"


def directory_of(mount_path: str, export: Any) -> str:
    """The drive's directory an export shares (or holds its file): ``path`` under the mount path."""
    sub = export.path.strip("/")
    return os.path.join(mount_path, sub) if sub else mount_path


@dataclass(frozen=True)
class ExportState:
    """What the system shows of one drive's exports of one kind."""

    kind: str
    wanted: int                 # exports of this kind the config asks for
    applied: bool               # the config bsud owns holds exactly what is wanted, and the service lists it
    present: bool               # something of bsud's for this drive is there (to withdraw before an unmount)
    server: str                 # the service, in words ("nfsd: 8 threads", "not running")
    detail: str = ""            # what differs, when not applied


@dataclass(frozen=True)
class Services:
    """What the process gives every kind it makes: the config's ``nfs`` section, and the nfs-ganesha the daemon
    owns (None: a kind that needs one makes its own, as a one-shot command does)."""

    nfs: NfsSettings | None = None
    ganesha: GaneshaServer | None = None


class ExportKind(ABC):
    kind: ClassVar[str]
    #: Commands it runs → their Debian packages; checked only for drives that have an export of this kind.
    tools: ClassVar[Mapping[str, str]] = {}

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @classmethod
    def make(cls, runner: Runner, services: Services) -> ExportKind:
        """One for a drive (a kind that needs settings or a shared server takes them from ``services``)."""
        return cls(runner)

    @abstractmethod
    def observe(self, drive: str, mount_path: str, exports: list[Any]) -> ExportState:
        """This drive's exports of this kind as the system has them now."""

    @abstractmethod
    def apply(self, drive: str, mount_path: str, exports: list[Any]) -> bool:
        """Make the system export exactly ``exports`` of the drive (transaction with rollback); True if changed."""

    @abstractmethod
    def withdraw(self, drive: str) -> bool:
        """Remove every export of the drive of this kind; True if something was removed."""

    def stats(self, drive: str, exports: list[Any]) -> dict[str, dict[str, int]]:
        """Per export (by :func:`export_name`), the I/O counters its server keeps; {} for servers that keep none."""
        return {}

    def clients(self) -> dict[str, dict[str, int]]:
        """Per client address, the I/O counters its server keeps over all its exports (not only this drive's);
        {} for servers that keep none."""
        return {}


def _none(*_: Any) -> list[Any]:
    return []


@dataclass(frozen=True)
class HaAgents:
    """A kind's part of a highly available gateway (``bsud.ha``): the OCF agents that serve its exports."""

    #: The TCP port clients reach one export on (the portblock agent blocks it while the gateway starts).
    port: Callable[[Any], int]
    #: The agents serving the drive's exports of this kind, started once the service address is up.
    serve: Callable[[Gateway, list[Any]], list[Agent]]
    #: Agents started before the data filesystem (NFS: the filesystem of its server's state).
    prepare: Callable[[Gateway, list[Any]], list[Agent]] = _none
    #: What the drive's ``ha`` section must give for this kind: (key under ``ha``, why) per problem.
    check: Callable[[Any], list[tuple[str, str]]] = _none


@dataclass(frozen=True)
class ExportPlugin:
    """Everything about one export kind, declared once in its module and listed once in ``bsud.exports.KINDS``."""

    #: The exporter's name: what an export's ``exporter`` says (its ``kind``, or ``nfs-ganesha``).
    name: str
    #: The host side.
    exporter: type[ExportKind]
    #: Its config model (with ``kind: Literal[...]``); None for a kind that serves another's (nfs-ganesha: nfs's).
    model: type[ExportModel] | None = None
    #: What names one export in messages and the status (``nfs:sub/dir``); with the model.
    describe: Callable[[Any], str] | None = None
    #: (key, why) per problem of one export, beyond its path (checked for every kind alike).
    check: Callable[[Any], list[tuple[str, str]]] = _none
    #: What no two exports (of any drives) may share: (what it is, value) of one export of ``drive``.
    identities: Callable[[str, Any], list[tuple[str, str]]] = _none
    #: How a highly available gateway serves it; None: an ``ha`` drive refuses it.
    ha: HaAgents | None = None
    #: Why an ``ha`` drive refuses it, when the registry's own sentence would not say what to do.
    no_ha: str | None = None
