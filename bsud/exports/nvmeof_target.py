"""What nvmet's subsystems and bsud's NVMe-oF gateway agree on: the kind's config model, nvmet's tree in configfs, each subsystem's serial,
model string (how bsud recognises its own) and namespace identity, each namespace's file in the drive, one export as
nvmet has it or should have it; and reading and writing configfs attributes.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from bsud.exports.base import directory_of
from bsud.exports.model import ExportModel
from bsud.host.kernel import CONFIGFS

class NvmeofExport(ExportModel):
    kind: Literal["nvmeof"]
    nqn: str
    size_gib: int = Field(ge=1)
    hosts: tuple[str, ...] = Field(min_length=1)
    transport: Literal["tcp"] = "tcp"
    address: str
    port: int = Field(default=4420, ge=1, le=65535)


#: nvmet's tree in configfs.
NVMET = CONFIGFS / "nvmet"
#: Namespace of the namespaces' UUIDs (fixed: changing it would change every namespace's identity).
UUID_NAMESPACE = uuid.UUID("0b5b8c6e-7f0e-4f3b-9c55-2a8f4e1d6b93")


def identity(drive: str, nqn: str) -> tuple[str, str]:
    """The subsystem's serial and its namespace's UUID (also its NGUID): derived, so that a subsystem made again
    (a change, drift, a reboot) is the same device to the hosts, which then reconnect to it as if nothing happened;
    a random one would make them drop the old namespace and its pending I/O."""
    return hashlib.sha256(nqn.encode()).hexdigest()[:20], str(uuid.uuid5(UUID_NAMESPACE, f"{drive}/{nqn}"))


def model(drive: str) -> str:
    """The subsystem's model string (at most 40 characters): ``bsud-<drive>``, or a digest-tailed prefix."""
    name = f"bsud-{drive}"
    return name if len(name) <= 40 else f"{name[:31]}-{hashlib.sha256(drive.encode()).hexdigest()[:8]}"


def namespace_file(mount_path: str, export: NvmeofExport) -> str:
    return os.path.join(directory_of(mount_path, export), f"nvmeof-{export.nqn}.img")


@dataclass(frozen=True)
class Subsystem:
    """One export as nvmet has it or should have it."""

    nqn: str
    file: str
    hosts: frozenset[str]
    address: str
    port: int

    @classmethod
    def of(cls, mount_path: str, export: NvmeofExport) -> Subsystem:
        return cls(export.nqn, namespace_file(mount_path, export), frozenset(export.hosts), export.address,
                   export.port)


def read_attr(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def write_attr(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)
