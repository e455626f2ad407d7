"""What LIO's targets and bsud's iSCSI gateway agree on: the kind's config model, the port, the backstore names (how bsud recognises its own),
each LUN's file in the drive, and one export as LIO should have it. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bsud.exports.base import directory_of
from bsud.exports.model import ExportModel
from bsud.naming import GIB

class Chap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(min_length=1)
    password: SecretStr


class IscsiExport(ExportModel):
    kind: Literal["iscsi"]
    iqn: str
    lun_size_gib: int = Field(ge=1)
    initiators: tuple[str, ...] = Field(min_length=1)
    chap: Chap | None = None


#: Where each target's TPG listens: every address, port 3260.
ADDRESS, PORT = "0.0.0.0", 3260


def backstore_name(drive: str, iqn: str) -> str:
    """``bsud_<drive>_<8 hex of the IQN>``: stable, unique per drive and IQN, in LIO's name alphabet."""
    return f"bsud_{re.sub(r'[^A-Za-z0-9_-]', '_', drive)}_{hashlib.sha256(iqn.encode()).hexdigest()[:8]}"


def lun_file(mount_path: str, export: IscsiExport) -> str:
    return os.path.join(directory_of(mount_path, export), f"iscsi-{export.iqn}.img")


@dataclass(frozen=True)
class Wanted:
    """One export as LIO should have it (the CHAP password kept out of reprs and logs)."""

    iqn: str
    backstore: str
    file: str
    size: int
    initiators: frozenset[str]
    chap_user: str | None
    chap_password: str | None  # compared, never shown

    def __repr__(self) -> str:
        return f"Wanted({self.iqn!r}, {self.backstore!r}, {self.file!r})"

    @classmethod
    def of(cls, drive: str, mount_path: str, export: IscsiExport) -> Wanted:
        return cls(export.iqn, backstore_name(drive, export.iqn), lun_file(mount_path, export),
                   export.lun_size_gib * GIB, frozenset(export.initiators),
                   export.chap.user if export.chap else None,
                   export.chap.password.get_secret_value() if export.chap else None)
