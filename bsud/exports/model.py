"""What every export's config shares: the settings base (kebab-case keys, frozen, no unknown keys), the export
base model (``path``, ``exporter``), and the rules every kind checks the same way (a drive-relative path, an
exports(5) client). Pure: no I/O. Each kind's own model is in its module (``bsud.exports.<kind>``).
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class Settings(BaseModel):
    """A config section: kebab-case keys, frozen, unknown keys refused."""

    model_config = ConfigDict(alias_generator=_kebab, populate_by_name=True, extra="forbid", frozen=True)


class ExportModel(Settings):
    """One entry of a drive's ``exports``; each kind's model adds its ``kind: Literal[...]`` and its fields."""

    #: A directory of the drive to share (relative to its mount path; empty: the whole drive).
    path: str = ""

    @property
    def exporter(self) -> str:
        """The name of the export kind that applies it (``bsud.exports.KINDS``): its ``kind`` by default."""
        return str(getattr(self, "kind"))


HOST_RE = re.compile(r"[A-Za-z0-9*?]([A-Za-z0-9*?.-]{0,251}[A-Za-z0-9*?])?")


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
