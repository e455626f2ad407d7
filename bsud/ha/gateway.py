"""A drive's start list and its promoter file (TOML), from the ``ha`` section and the export kinds' declarations.

On the node where DRBD's resource (backed by the drive's LV) may be promoted, drbd-reactor starts the ``start`` list
in order — each ``ocf:<vendor>:<agent> <name> key=value …`` entry an OCF resource agent run through its
``ocf.rs@`` wrapper, with ``OCF_RESKEY_<key>`` set — and stops it in reverse order when the resource must move.
bsud writes that list in the layout linstor-gateway uses:

  portblock block → the kinds' own filesystems (NFS: its state's) → Filesystem (the data) → IPaddr2 (the service
  address) → each kind's agents, in ``bsud.exports.KINDS`` order (nfsserver + exportfs / iSCSITarget +
  iSCSILogicalUnit / nvmet-subsystem + a symlink per allowed host + nvmet-namespace + nvmet-port) → portblock unblock

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import tomllib
from typing import Any

from bsud.config.ha import HaConfig
from bsud.exports import KINDS, by_exporter
from bsud.exports.base import HEADER
from bsud.ha.agent import Agent, Gateway, heartbeat

SCHEMA_VERSION = 1


def ports(exports: tuple[Any, ...]) -> str:
    """The service ports of the exports, each once, in the exports' order (what portblock blocks)."""
    found: list[int] = []
    for export in exports:
        agents = KINDS[export.exporter].ha
        port = agents.port(export) if agents is not None else None
        if port is not None and port not in found:
            found.append(port)
    return ",".join(map(str, found))


def start_list(drive: str, mount_path: str, ha: HaConfig, exports: tuple[Any, ...],
               mount_options: tuple[str, ...] = ()) -> list[Agent]:
    """The agents drbd-reactor starts for the drive, in order (``ha.drbd_device`` known: given, or asked of
    ``drbdadm sh-dev`` by the caller); the Filesystem agent mounts with the drive's ``mount_options``."""
    if ha.drbd_device is None:
        raise ValueError(f"drive {drive!r}: the DRBD device of resource {ha.drbd_resource!r} is not known")
    iface = ipaddress.ip_interface(ha.service_ip)
    gw = Gateway(drive, ha.mount_path or mount_path, str(iface.ip), iface.version, ha)
    blocked = (("ip", gw.ip), ("portno", ports(exports)))
    served = [(agents, found) for name, found in by_exporter(exports).items() if (agents := KINDS[name].ha)]
    agents = [heartbeat("portblock", "pblock0", *blocked, ("action", "block"), ("protocol", "tcp"))] \
        if ha.portblock else []
    for kind, found in served:
        agents += kind.prepare(gw, found)
    agents.append(heartbeat("Filesystem", "fs_data", ("device", ha.drbd_device), ("directory", gw.mount),
                            ("fstype", "btrfs"), ("run_fsck", "no"),
                            *((("options", ",".join(mount_options)),) if mount_options else ())))
    agents.append(heartbeat("IPaddr2", "service_ip0", ("ip", gw.ip), ("cidr_netmask", str(iface.network.prefixlen)),
                            *((("nic", ha.nic),) if ha.nic else ())))
    for kind, found in served:
        agents += kind.serve(gw, found)
    if ha.portblock:
        agents.append(heartbeat("portblock", "portunblock0", *blocked, ("action", "unblock"), ("protocol", "tcp")))
    return agents


def toml_string(value: str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def render(drive: str, mount_path: str, ha: HaConfig, exports: tuple[Any, ...],
           mount_options: tuple[str, ...] = ()) -> str:
    """The promoter file (TOML) for the drive."""
    lines = [HEADER.format(drive=drive).rstrip("\n"),
             "[[promoter]]",
             "[promoter.metadata]",
             f"bsud-drive = {toml_string(drive)}",
             f"bsud-schema-version = {SCHEMA_VERSION}",
             f"[promoter.resources.{toml_string(ha.drbd_resource)}]",
             f"runner = {toml_string('systemd')}",
             f"stop-services-on-exit = {toml_string(ha.stop_services_on_exit)}",
             f"on-drbd-demote-failure = {toml_string(ha.on_drbd_demote_failure)}",
             f"target-as = {toml_string(ha.target_as)}",
             "start = ["]
    lines += [f"    {toml_string(agent.line())}," for agent in start_list(drive, mount_path, ha, exports,
                                                                                  mount_options)]
    lines.append("]")
    return "\n".join(lines) + "\n"


def start_list_lines(text: str) -> list[str]:
    """The ``start`` entries of a promoter file bsud wrote (read back with tomllib)."""
    data = tomllib.loads(text)
    return [line for promoter in data.get("promoter", []) for resource in promoter.get("resources", {}).values()
            for line in resource.get("start", [])]
