"""Highly available gateways: the drbd-reactor promoter file for a drive with an ``ha`` section.

On the node where DRBD's resource (backed by the drive's LV) may be promoted, drbd-reactor starts the ``start`` list
in order — each ``ocf:<vendor>:<agent> <name> key=value …`` entry an OCF resource agent run through its
``ocf.rs@`` wrapper, with ``OCF_RESKEY_<key>`` set — and stops it in reverse order when the resource must move.
bsud writes that list in the layout linstor-gateway uses:

  portblock block → Filesystem (cluster-private, NFS only) → Filesystem (the data) → IPaddr2 (the service address)
  → the gateway (nfsserver + exportfs / iSCSITarget + iSCSILogicalUnit / nvmet-subsystem + a symlink per allowed
  host + nvmet-namespace + nvmet-port) → portblock unblock

Every line is checked against its agent's own ``meta-data`` (from the resource-agents package) before the file is
written: a parameter the agent does not have, or a required one missing, is refused — found here, not in production.
bsud never promotes or demotes DRBD itself.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from bsud.config.exports import IscsiExport, NfsExport, NvmeofExport
from bsud.config.ha import HaConfig
from bsud.exports.base import HEADER, directory_of
from bsud.exports.files import ExportError, replace_file
from bsud.exports.iscsi import lun_file
from bsud.exports.nfs import fsid
from bsud.exports.nvmeof import identity, namespace_file
from bsud.host.kernel import systemd_running
from bsud.logs import get_logger
from bsud.runner import Runner

log = get_logger("bsud.host.ha")

OCF_ROOT = Path("/usr/lib/ocf")
SCHEMA_VERSION = 1
NFS_PORT, ISCSI_PORT = 2049, 3260
NVMET = "/sys/kernel/config/nvmet"


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


def _ports(exports: tuple[object, ...]) -> str:
    ports: list[int] = []
    for export in exports:
        port = NFS_PORT if isinstance(export, NfsExport) else ISCSI_PORT if isinstance(export, IscsiExport) \
            else export.port if isinstance(export, NvmeofExport) else None
        if port is not None and port not in ports:
            ports.append(port)
    return ",".join(map(str, ports))


def start_list(drive: str, mount_path: str, ha: HaConfig, exports: tuple[object, ...]) -> list[Agent]:
    """The agents drbd-reactor starts for the drive, in order."""
    iface = ipaddress.ip_interface(ha.service_ip)
    ip, mount = str(iface.ip), ha.mount_path or mount_path
    ports = _ports(exports)
    nfs = [e for e in exports if isinstance(e, NfsExport)]
    agents = [Agent("heartbeat", "portblock", "pblock0",
                    (("ip", ip), ("portno", ports), ("action", "block"), ("protocol", "tcp")))] if ha.portblock else []
    if nfs and ha.cluster_private_device and ha.cluster_private_mount:
        agents.append(Agent("heartbeat", "Filesystem", "fs_cluster_private",
                            (("device", ha.cluster_private_device), ("directory", ha.cluster_private_mount),
                             ("fstype", "ext4"), ("run_fsck", "no"))))
    agents.append(Agent("heartbeat", "Filesystem", "fs_data",
                        (("device", ha.drbd_device), ("directory", mount), ("fstype", "btrfs"), ("run_fsck", "no"))))
    agents.append(Agent("heartbeat", "IPaddr2", "service_ip0",
                        (("ip", ip), ("cidr_netmask", str(iface.network.prefixlen)),
                         *((("nic", ha.nic),) if ha.nic else ()))))
    if nfs:
        agents.append(Agent("heartbeat", "nfsserver", "nfsserver",
                            (("nfs_shared_infodir", f"{ha.cluster_private_mount}/nfs"), ("nfs_ip", ip))))
        for i, export in enumerate(nfs):
            for j, client in enumerate(export.clients):
                agents.append(Agent("heartbeat", "exportfs", f"export{i}_{j}",
                                    (("clientspec", client), ("directory", directory_of(mount, export)),
                                     ("fsid", fsid(drive, export.path)), ("options", ",".join(export.options)))))
    for i, export in enumerate(e for e in exports if isinstance(e, IscsiExport)):
        initiators = " ".join(export.initiators)
        target = [("iqn", export.iqn), ("portals", f"{ip}:{ISCSI_PORT}"), ("implementation", "lio-t"),
                  ("allowed_initiators", initiators)]
        if export.chap is not None:
            target += [("incoming_username", export.chap.user),
                       ("incoming_password", export.chap.password.get_secret_value())]
        agents.append(Agent("heartbeat", "iSCSITarget", f"target{i}", tuple(target)))
        agents.append(Agent("heartbeat", "iSCSILogicalUnit", f"lu{i}",
                            (("target_iqn", export.iqn), ("lun", "0"), ("path", lun_file(mount, export)),
                             ("implementation", "lio-t"), ("liot_bstype", "fileio"),
                             ("allowed_initiators", initiators))))
    for i, export in enumerate(e for e in exports if isinstance(e, NvmeofExport)):
        serial, uuid = identity(drive, export.nqn)
        agents.append(Agent("heartbeat", "nvmet-subsystem", f"subsys{i}",
                            (("nqn", export.nqn), ("allowed_initiators", " ".join(export.hosts)),
                             ("serial", serial))))
        # The nvmet-subsystem agent links each allowed host into the subsystem but its stop only rmdirs the
        # subsystem, which configfs refuses while a link is in it (ENOTEMPTY, and the agent still says stopped): one
        # symlink entry per host owns that link, so its stop (just before the subsystem's) removes it.
        for j, host in enumerate(export.hosts):
            agents.append(Agent("heartbeat", "symlink", f"subsys{i}_host{j}",
                                (("link", f"{NVMET}/subsystems/{export.nqn}/allowed_hosts/{host}"),
                                 ("target", f"{NVMET}/hosts/{host}"))))
        agents.append(Agent("heartbeat", "nvmet-namespace", f"ns{i}",
                            (("nqn", export.nqn), ("namespace_id", "1"),
                             ("backing_path", namespace_file(mount, export)), ("uuid", uuid), ("nguid", uuid))))
        agents.append(Agent("heartbeat", "nvmet-port", f"port{i}",
                            (("nqns", export.nqn), ("addr", ip), ("svcid", str(export.port)), ("type", "tcp"),
                             ("addr_fam", "ipv6" if iface.version == 6 else "ipv4"))))
    if ha.portblock:
        agents.append(Agent("heartbeat", "portblock", "portunblock0",
                            (("ip", ip), ("portno", ports), ("action", "unblock"), ("protocol", "tcp"))))
    return agents


def toml_string(value: str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def render(drive: str, mount_path: str, ha: HaConfig, exports: tuple[object, ...]) -> str:
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
    lines += [f"    {toml_string(agent.line())}," for agent in start_list(drive, mount_path, ha, exports)]
    lines.append("]")
    return "\n".join(lines) + "\n"


def metadata(vendor: str, agent: str, ocf_root: Path = OCF_ROOT) -> dict[str, bool]:
    """An agent's parameters (name → required) from its own ``meta-data`` action."""
    path = ocf_root / "resource.d" / vendor / agent
    if not os.access(path, os.X_OK):
        raise ExportError(f"OCF agent {vendor}:{agent} is not installed ({path}; package resource-agents)")
    out = subprocess.run([str(path), "meta-data"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OCF_ROOT": str(ocf_root)})
    try:
        root = ET.fromstring(out.stdout)
    except ET.ParseError as exc:
        raise ExportError(f"OCF agent {vendor}:{agent}: its meta-data is not XML ({exc})") from None
    return {p.get("name", ""): p.get("required") == "1" for p in root.iter("parameter")}


def check_agents(agents: list[Agent], ocf_root: Path = OCF_ROOT) -> list[str]:
    """What each entry gets wrong against its agent's meta-data: unknown parameters, required ones missing."""
    problems: list[str] = []
    known: dict[tuple[str, str], dict[str, bool]] = {}
    for agent in agents:
        if agent.is_unit:
            continue
        key = (agent.vendor, agent.agent)
        if key not in known:
            known[key] = metadata(*key, ocf_root=ocf_root)
        params = known[key]
        given = {k for k, _ in agent.params}
        unknown = sorted(given - set(params))
        missing = sorted(name for name, required in params.items() if required and name not in given)
        if unknown:
            problems.append(f"{agent.agent} {agent.name}: {agent.agent} has no parameter {', '.join(unknown)}")
        if missing:
            problems.append(f"{agent.agent} {agent.name}: required parameter {', '.join(missing)} missing")
    return problems


#: A documentation address (RFC 5737) and the discard port: what the portblock probe blocks, in a namespace of its own.
PROBE_IP, PROBE_PORT = "192.0.2.1", "9"


def portblock_problem(ocf_root: Path = OCF_ROOT) -> str | None:
    """Whether this machine's portblock agent finds the rules it makes, tried for real in a network namespace of its
    own: ``start`` (block) then ``stop`` must leave no rule. resource-agents before ClusterLabs/resource-agents#1924
    (Debian 12's 4.12) looks for ``tcp`` in ``iptables -n -L``, which iptables 1.8.9 prints as ``6``: it never sees
    its rules, so an unblock would leave the service ports closed."""
    path = ocf_root / "resource.d" / "heartbeat" / "portblock"
    if not os.access(path, os.X_OK):
        return None  # check_agents says the agent is missing
    if shutil.which("iptables") is None or shutil.which("ip") is None:
        return "the portblock agent needs iptables and ip (packages iptables, iproute2)"
    netns = f"bsud-portblock-{os.getpid()}"
    run = lambda *argv: subprocess.run(list(argv), capture_output=True, text=True, timeout=60, env=env)  # noqa: E731
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "OCF_ROOT": str(ocf_root), "OCF_RESOURCE_INSTANCE": "bsud-probe", "HA_RSCTMP": state,
               "OCF_RESKEY_ip": PROBE_IP, "OCF_RESKEY_portno": PROBE_PORT, "OCF_RESKEY_protocol": "tcp",
               "OCF_RESKEY_action": "block"}
        made = run("ip", "netns", "add", netns)
        if made.returncode != 0:
            return f"cannot try the portblock agent in a network namespace: {made.stderr.strip()}"
        try:
            started = run("ip", "netns", "exec", netns, str(path), "start")
            run("ip", "netns", "exec", netns, str(path), "stop")
            rules = run("ip", "netns", "exec", netns, "iptables", "-w", "-S", "INPUT").stdout
        finally:
            run("ip", "netns", "del", netns)
    if started.returncode != 0:
        return f"the portblock agent failed to block a port ({started.returncode}): {started.stderr.strip()[-300:]}"
    if PROBE_IP in rules:
        version = subprocess.run(["iptables", "-V"], capture_output=True, text=True).stdout.strip()
        return (f"the portblock agent here does not find the rules it makes ({version} lists protocols as numbers, "
                "which resource-agents before ClusterLabs/resource-agents#1924 does not read): its unblock would "
                "leave the service ports closed; install a fixed resource-agents, or set \"portblock\": false in "
                "the drive's ha section")
    return None


def check_gateway(agents: list[Agent], ocf_root: Path = OCF_ROOT) -> list[str]:
    """:func:`check_agents`, and the portblock agent tried when the list uses it."""
    problems = check_agents(agents, ocf_root)
    if any(a.agent == "portblock" for a in agents):
        problem = portblock_problem(ocf_root)
        problems += [f"portblock: {problem}"] if problem else []
    return problems


#: Where systemd looks for unit files, most specific first.
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/run/systemd/system"), Path("/usr/lib/systemd/system"),
             Path("/lib/systemd/system"))
#: nfsdcld (the NFSv4 client tracking daemon nfs-server.service pulls in) keeps its database open under
#: /var/lib/nfs, and nothing stops it with nfs-server: the nfsserver agent's stop then fails to unmount its
#: /var/lib/nfs bind mount ("target is busy") — unless nfsdcld is part of nfs-server.
NFSDCLD_DROPIN = Path("/etc/systemd/system/nfsdcld.service.d/bsud-ha.conf")
NFSDCLD_DROPIN_TEXT = ("# Written by bsud for its highly available NFS gateways (docs/ha.md): nfsdcld stops with\n"
                       "# nfs-server, so that the nfsserver agent's stop can unmount /var/lib/nfs.\n"
                       "[Unit]\nPartOf=nfs-server.service\n")


def needs_nfsdcld_dropin(agents: list[Agent], unit_dirs: tuple[Path, ...] = UNIT_DIRS) -> bool:
    """Whether the list runs the nfsserver agent on a host that has nfsdcld.service."""
    return any(a.agent == "nfsserver" for a in agents) and any((d / "nfsdcld.service").exists() for d in unit_dirs)


class Promoter:
    """Writes a drive's promoter file (``<promoter-dir>/bsud-<drive>.toml``) and has drbd-reactor reload it."""

    def __init__(self, runner: Runner, ocf_root: Path = OCF_ROOT, unit_dirs: tuple[Path, ...] = UNIT_DIRS,
                 nfsdcld_dropin: Path = NFSDCLD_DROPIN) -> None:
        self.runner = runner
        self.ocf_root = ocf_root
        self.unit_dirs = unit_dirs
        self.nfsdcld_dropin = nfsdcld_dropin

    @staticmethod
    def file(drive: str, ha: HaConfig) -> Path:
        return Path(ha.promoter_dir) / f"bsud-{drive}.toml"

    def _reload(self) -> None:
        if not systemd_running():
            return
        loaded = self.runner.run(["systemctl", "show", "--property=LoadState", "--value", "drbd-reactor.service"],
                                 timeout=60, check=False, quiet=True)
        if loaded.stdout.strip() == "loaded":  # not packaged for Debian 12: often absent
            self.runner.run(["systemctl", "try-reload-or-restart", "drbd-reactor.service"], timeout=120)

    def unprepared(self, agents: list[Agent]) -> list[Path]:
        """The files :meth:`prepare_host` would write for the list's agents (empty: the host is ready)."""
        dropin = self.nfsdcld_dropin
        if not needs_nfsdcld_dropin(agents, self.unit_dirs) or (dropin.exists()
                                                                 and dropin.read_text() == NFSDCLD_DROPIN_TEXT):
            return []
        return [dropin]

    def prepare_host(self, agents: list[Agent]) -> bool:
        """What the list's agents need of this host beyond their packages: nfsdcld stopping with nfs-server (a
        systemd drop-in). True when something changed."""
        if not self.unprepared(agents):
            return False

        def daemon_reload() -> None:
            if systemd_running():
                self.runner.run(["systemctl", "daemon-reload"], timeout=120)

        return replace_file(self.nfsdcld_dropin, NFSDCLD_DROPIN_TEXT, apply=daemon_reload, verify=lambda: None)

    def write(self, drive: str, mount_path: str, ha: HaConfig, exports: tuple[object, ...]) -> bool:
        """Make the file hold what the config asks (checked against the agents first), and the host ready for its
        agents (:meth:`prepare_host`); True when either changed."""
        prepared = self.prepare_host(start_list(drive, mount_path, ha, exports))

        def validate(temp: Path) -> None:
            agents = [Agent.parse(a) for a in start_list_lines(temp.read_text())]
            problems = check_gateway(agents, self.ocf_root)
            if problems:
                raise ExportError("; ".join(problems))

        # 0600: an iSCSI target's CHAP password is in it
        return prepared | replace_file(self.file(drive, ha), render(drive, mount_path, ha, exports), apply=self._reload,
                            verify=lambda: None, validate=validate, mode=0o600)


def start_list_lines(text: str) -> list[str]:
    """The ``start`` entries of a promoter file bsud wrote (read back with tomllib)."""
    import tomllib

    data = tomllib.loads(text)
    return [line for promoter in data.get("promoter", []) for resource in promoter.get("resources", {}).values()
            for line in resource.get("start", [])]
