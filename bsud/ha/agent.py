"""One ``start`` entry of drbd-reactor's promoter (an OCF resource agent, or a plain systemd unit), and what a
gateway's agents are built from. Pure data: the export kinds build their agents with these
(``bsud.exports.base.HaAgents``) without importing the generator.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: Where the resource-agents package installs the agents (``resource.d/<vendor>/<agent>``).
OCF_ROOT = Path("/usr/lib/ocf")


@dataclass(frozen=True)
class Agent:
    """One ``start`` entry: an OCF resource agent instance."""

    vendor: str
    agent: str
    name: str
    params: tuple[tuple[str, str], ...]

    @classmethod
    def unit(cls, name: str) -> Agent:
        """A plain systemd unit in the list (drbd-reactor starts it as it is)."""
        return cls("systemd", "unit", name, ())

    @property
    def is_unit(self) -> bool:
        return self.vendor == "systemd"

    def line(self) -> str:
        """As drbd-reactor reads it (its words split like a shell's: values with spaces are quoted)."""
        if self.is_unit:
            return self.name
        return " ".join([f"ocf:{self.vendor}:{self.agent}", self.name,
                         *(f"{key}={shlex.quote(value)}" for key, value in self.params)])

    @classmethod
    def parse(cls, line: str) -> Agent:
        """The inverse of :meth:`line` (how drbd-reactor splits an entry: ``shell_words::split``)."""
        if not line.startswith("ocf:"):
            return cls.unit(line.strip())
        head, _, rest = line.partition(" ")
        _, vendor, agent = head.split(":", 2)
        words = shlex.split(rest)
        return cls(vendor, agent, words[0], tuple(tuple(w.split("=", 1)) for w in words[1:]))  # type: ignore[misc]

    def env(self, resource: str, ocf_root: Path = OCF_ROOT) -> dict[str, str]:
        """The environment drbd-reactor's ocf.rs@ wrapper gives the agent (instance ``<name>_<resource>``)."""
        return {"OCF_ROOT": str(ocf_root), "OCF_RESOURCE_INSTANCE": f"{self.name}_{resource}",
                **{f"OCF_RESKEY_{k}": v for k, v in self.params}}


def heartbeat(agent: str, name: str, *params: tuple[str, str]) -> Agent:
    """An agent of the ``heartbeat`` vendor (every agent bsud's gateways use)."""
    return Agent("heartbeat", agent, name, tuple(params))


class ClusterPrivate(Protocol):
    """What the agents read of a drive's ``ha`` section (``bsud.config.ha.HaConfig``, not imported: the config
    builds its checks from the kinds, which build their agents from this module)."""

    @property
    def cluster_private_device(self) -> str | None: ...

    @property
    def cluster_private_mount(self) -> str | None: ...


@dataclass(frozen=True)
class Gateway:
    """What a kind's agents are built from: the drive, where the gateway mounts its data, the service address."""

    drive: str
    mount: str        # where the gateway mounts the DRBD device (the data)
    ip: str           # the service address, without its prefix
    version: int      # 4 or 6
    ha: ClusterPrivate
