"""A drive's ``ha`` section: its exports served by a highly available gateway (drbd-reactor's promoter starting OCF
resource agents on the DRBD Primary), the schema and the rules the schema cannot say. Pure: no I/O."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import Field

from bsud.exports import ha_problems
from bsud.exports.model import Settings

DRBD_RESOURCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
NIC_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}")
DEVICE_RE = re.compile(r"/dev/[A-Za-z0-9/_.+-]+")
#: A drive's name (the rule of ``bsud.config.rules``).
DRIVE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+_.-]{0,62}")

#: systemd's FailureAction= values drbd-reactor accepts for on-drbd-demote-failure.
DEMOTE_FAILURE_ACTIONS = ("none", "reboot", "reboot-force", "reboot-immediate", "poweroff", "poweroff-force",
                          "poweroff-immediate", "exit", "exit-force")


class HaConfig(Settings):
    #: The DRBD resource whose backing device is the drive's LV.
    drbd_resource: str
    #: The drive of the other node's bsud (the peer's LV is the resource's other backing device): the Primary's bsud
    #: makes its volumes grow with this drive's.
    peer_drive: str | None = None
    #: The peer's VM, where the Primary attaches a volume it made for the peer's drive (None: the VM the peer's
    #: drive's volumes are attached to).
    peer_instance: str | None = None
    #: The DRBD device the gateway mounts (``/dev/drbd1000``; None: ``drbdadm sh-dev`` tells).
    drbd_device: str | None = None
    #: The service address the clients use, with its prefix (``10.0.0.50/24``): it moves with the Primary.
    service_ip: str
    #: The interface IPaddr2 puts it on (None: the one whose network holds it).
    nic: str | None = None
    #: Where the gateway mounts the DRBD device (None: the drive's mount-path).
    mount_path: str | None = None
    #: NFS only: a small DRBD device of its own for the NFS server's state (``nfs_shared_infodir``), and where to
    #: mount it, so clients' locks and leases move with the service.
    cluster_private_device: str | None = None
    cluster_private_mount: str | None = None
    target_as: Literal["Wants", "Requires", "Requisite", "BindsTo"] = "Requires"
    stop_services_on_exit: bool = True
    on_drbd_demote_failure: Literal[DEMOTE_FAILURE_ACTIONS] = "reboot-immediate"  # type: ignore[valid-type]
    #: drbd-reactor's directory of snippets.
    promoter_dir: str = Field(default="/etc/drbd-reactor.d")
    #: Block the service ports while the gateway starts (portblock block … unblock, as linstor-gateway does), so
    #: that clients retry rather than meet a half-started server. False for a machine whose portblock agent cannot
    #: see its own rules (``bsud ha-config`` checks it: Debian 12's resource-agents with its iptables 1.8.9).
    portblock: bool = True


INSTANCE_RE = re.compile(r"i-[0-9a-zA-Z]{1,40}")


def check_ha(ha: HaConfig, exports: tuple[Any, ...], layout: str, drive: str = "",
             mount_path: str = "") -> list[tuple[str, str]]:
    """(key under ``ha``, why) for each problem."""
    problems: list[tuple[str, str]] = []
    if layout != "lvm":
        problems.append(("", "a highly available drive needs the lvm layout (its LV is DRBD's backing device)"))
    if ha.peer_drive is None:
        problems.append(("peer-drive", "required: the name of the other DRBD node's bsud drive (both LVs grow "
                                       "together: the Primary's bsud makes the peer's volumes too)"))
    elif ha.peer_drive == drive:
        problems.append(("peer-drive", f"{ha.peer_drive!r} is this drive; name the other node's drive (drive names "
                                       "are the volumes' tags: each node's drive needs its own)"))
    elif not DRIVE_NAME_RE.fullmatch(ha.peer_drive):
        problems.append(("peer-drive", f"{ha.peer_drive!r} is not a drive name"))
    if ha.peer_instance is not None and not INSTANCE_RE.fullmatch(ha.peer_instance):
        problems.append(("peer-instance", f"{ha.peer_instance!r} is not an instance id (i-…)"))
    if ha.mount_path is not None and mount_path and ha.mount_path.rstrip("/") != mount_path.rstrip("/"):
        problems.append(("mount-path", f"{ha.mount_path!r} differs from the drive's mount-path {mount_path!r}: bsud "
                                       "watches the filesystem on the DRBD device where the gateway mounts it, the "
                                       "drive's mount-path; set mount-path to it and drop ha.mount-path"))
    if not DRBD_RESOURCE_RE.fullmatch(ha.drbd_resource):
        problems.append(("drbd-resource", f"{ha.drbd_resource!r} is not a DRBD resource name"))
    for key, device in (("drbd-device", ha.drbd_device), ("cluster-private-device", ha.cluster_private_device)):
        if device is not None and not DEVICE_RE.fullmatch(device):
            problems.append((key, f"{device!r} is not a device path (/dev/drbd1000)"))
    try:
        iface = ipaddress.ip_interface(ha.service_ip)
        if "/" not in ha.service_ip or iface.ip == iface.network.network_address and iface.network.prefixlen < 31:
            raise ValueError
    except ValueError:
        problems.append(("service-ip", f"{ha.service_ip!r} is not a host address with its prefix (10.0.0.50/24)"))
    if ha.nic is not None and not NIC_RE.fullmatch(ha.nic):
        problems.append(("nic", f"{ha.nic!r} is not an interface name"))
    for key, path in (("mount-path", ha.mount_path), ("cluster-private-mount", ha.cluster_private_mount)):
        if path is not None and not path.startswith("/"):
            problems.append((key, f"{path!r} must be an absolute path"))
    problems += ha_problems(ha, exports)  # each kind: refused without HA agents, or what it needs of the section
    return problems
