"""The ``iscsi`` kind: its config (an IQN, a LUN's size, the initiators, CHAP), its rules, and the gateway's agents
(iSCSITarget, iSCSILogicalUnit). Its host side is LIO (``bsud.exports.lio``).
"""

from __future__ import annotations

import re

from bsud.exports.base import ExportPlugin, HaAgents
from bsud.exports.iscsi_target import PORT, IscsiExport, lun_file
from bsud.exports.lio import Lio
from bsud.ha.agent import Agent, Gateway, heartbeat


#: iqn.YYYY-MM.reversed.domain[:anything] (RFC 3720 §3.2.6.3.1), lower case.
IQN_RE = re.compile(r"iqn\.\d{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
                    r"(:[a-z0-9.:_-]+)?")


def check(export: IscsiExport) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not IQN_RE.fullmatch(export.iqn) or len(export.iqn) > 223:
        problems.append(("iqn", f"{export.iqn!r} is not an IQN (iqn.YYYY-MM.reversed.domain:name, lower case)"))
    problems += [("initiators", f"{i!r} is not an initiator IQN") for i in export.initiators
                 if not IQN_RE.fullmatch(i)]
    if export.chap is not None and not 12 <= len(export.chap.password.get_secret_value()) <= 16:
        problems.append(("chap.password", "must be 12 to 16 characters (what iSCSI initiators accept)"))
    return problems


def ha_serve(gw: Gateway, exports: list[IscsiExport]) -> list[Agent]:
    """A target and its logical unit per export, on the service address."""
    agents = []
    for i, export in enumerate(exports):
        initiators = " ".join(export.initiators)
        target = [("iqn", export.iqn), ("portals", f"{gw.ip}:{PORT}"), ("implementation", "lio-t"),
                  ("allowed_initiators", initiators)]
        if export.chap is not None:
            target += [("incoming_username", export.chap.user),
                       ("incoming_password", export.chap.password.get_secret_value())]
        agents.append(heartbeat("iSCSITarget", f"target{i}", *target))
        agents.append(heartbeat("iSCSILogicalUnit", f"lu{i}", ("target_iqn", export.iqn), ("lun", "0"),
                                ("path", lun_file(gw.mount, export)), ("implementation", "lio-t"),
                                ("liot_bstype", "fileio"), ("allowed_initiators", initiators)))
    return agents


PLUGIN = ExportPlugin(name="iscsi", exporter=Lio, model=IscsiExport, describe=lambda e: f"iscsi:{e.iqn}", check=check,
                      identities=lambda drive, e: [("iqn", e.iqn)],
                      ha=HaAgents(port=lambda e: PORT, serve=ha_serve))
