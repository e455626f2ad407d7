"""The ``nvmeof`` kind: its config (an NQN, a namespace's size, the hosts, the address and port), its rules, and the
gateway's agents (nvmet-subsystem, a symlink per allowed host, nvmet-namespace, nvmet-port). Its host side is nvmet
(``bsud.exports.nvmet``).
"""

from __future__ import annotations

import ipaddress
import re

from bsud.exports.base import ExportPlugin, HaAgents
from bsud.exports.nvmeof_target import NVMET, NvmeofExport, identity, namespace_file
from bsud.exports.nvmet import NvmetTcp
from bsud.ha.agent import Agent, Gateway, heartbeat


#: nqn.YYYY-MM.reversed.domain:anything (NVMe base spec 4.5), at most 223 bytes.
NQN_RE = re.compile(r"nqn\.\d{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
                    r":[A-Za-z0-9.:_-]+")


def check(export: NvmeofExport) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not NQN_RE.fullmatch(export.nqn) or len(export.nqn.encode()) > 223:
        problems.append(("nqn", f"{export.nqn!r} is not an NQN (nqn.YYYY-MM.reversed.domain:name)"))
    problems += [("hosts", f"{h!r} is not a host NQN") for h in export.hosts
                 if not NQN_RE.fullmatch(h) and not h.startswith("nqn.2014-08.org.nvmexpress:uuid:")]
    try:
        ipaddress.ip_address(export.address)
    except ValueError:
        problems.append(("address", f"{export.address!r} is not an IP address to listen on"))
    return problems


def ha_serve(gw: Gateway, exports: list[NvmeofExport]) -> list[Agent]:
    """Per export: its subsystem, a symlink per allowed host, its namespace, its port on the service address."""
    agents = []
    for i, export in enumerate(exports):
        serial, uuid = identity(gw.drive, export.nqn)
        agents.append(heartbeat("nvmet-subsystem", f"subsys{i}", ("nqn", export.nqn),
                                ("allowed_initiators", " ".join(export.hosts)), ("serial", serial)))
        # The nvmet-subsystem agent links each allowed host into the subsystem but its stop only rmdirs the
        # subsystem, which configfs refuses while a link is in it (ENOTEMPTY, and the agent still says stopped): one
        # symlink entry per host owns that link, so its stop (just before the subsystem's) removes it.
        for j, host in enumerate(export.hosts):
            agents.append(heartbeat("symlink", f"subsys{i}_host{j}",
                                    ("link", f"{NVMET}/subsystems/{export.nqn}/allowed_hosts/{host}"),
                                    ("target", f"{NVMET}/hosts/{host}")))
        agents.append(heartbeat("nvmet-namespace", f"ns{i}", ("nqn", export.nqn), ("namespace_id", "1"),
                                ("backing_path", namespace_file(gw.mount, export)), ("uuid", uuid), ("nguid", uuid)))
        agents.append(heartbeat("nvmet-port", f"port{i}", ("nqns", export.nqn), ("addr", gw.ip),
                                ("svcid", str(export.port)), ("type", "tcp"),
                                ("addr_fam", "ipv6" if gw.version == 6 else "ipv4")))
    return agents


PLUGIN = ExportPlugin(
    name="nvmeof", exporter=NvmetTcp, model=NvmeofExport, describe=lambda e: f"nvmeof:{e.nqn}", check=check,
    identities=lambda drive, e: [("nqn", e.nqn), ("address and port", f"{e.address}:{e.port}")],
    ha=HaAgents(port=lambda e: e.port, serve=ha_serve))
