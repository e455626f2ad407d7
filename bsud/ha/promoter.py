"""Writing a drive's promoter file (``<promoter-dir>/bsud-<drive>.toml``) and readying the host for its agents, then
having drbd-reactor reload it. The file is checked against the agents (``bsud.ha.ocf``) before it replaces anything.
bsud never promotes or demotes DRBD itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bsud.config.ha import HaConfig
from bsud.exports.files import ExportError, replace_file
from bsud.ha.agent import OCF_ROOT, Agent
from bsud.ha.gateway import render, start_list, start_list_lines
from bsud.ha.ocf import check_gateway
from bsud.host.kernel import systemd_running
from bsud.runner import Runner

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

    def write(self, drive: str, mount_path: str, ha: HaConfig, exports: tuple[Any, ...],
              mount_options: tuple[str, ...] = ()) -> bool:
        """Make the file hold what the config asks (checked against the agents first), and the host ready for its
        agents (:meth:`prepare_host`); True when either changed."""
        prepared = self.prepare_host(start_list(drive, mount_path, ha, exports, mount_options))

        def validate(temp: Path) -> None:
            agents = [Agent.parse(a) for a in start_list_lines(temp.read_text())]
            problems = check_gateway(agents, self.ocf_root, self.runner)
            if problems:
                raise ExportError("; ".join(problems))

        # 0600: an iSCSI target's CHAP password is in it
        text = render(drive, mount_path, ha, exports, mount_options)
        return prepared | replace_file(self.file(drive, ha), text, apply=self._reload, verify=lambda: None,
                                       validate=validate, mode=0o600)
