"""What every export kind offers (NFS, SMB, iSCSI, NVMe-oF): the tools it runs, the state it observes from the
system (never remembered), and the transaction that applies or withdraws a drive's exports of that kind.

A kind is one module here and one line in ``bsud.exports.KINDS``. Exports exist only while their drive is
online and mounted: the planner asks for them after the mount and withdraws them before any unmount.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from bsud.runner import Runner


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


class ExportKind(ABC):
    kind: ClassVar[str]
    #: Commands it runs, checked only for drives that have an export of this kind.
    tools: ClassVar[tuple[str, ...]] = ()

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

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
