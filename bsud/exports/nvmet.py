"""The ``nvmeof`` kind's host side (its config and rules: ``bsud.exports.nvmeof``): NVMe over Fabrics (TCP)
through the kernel target, nvmet, configured in configfs (``/sys/kernel/config/nvmet``, its whole
interface; the Python tools around it, nvmetcli, are not packaged as a library).

Each export is a subsystem with the NQN whose model string names the drive (``bsud-<drive>``: how bsud recognises
its own), namespace 1 on a sparse file in the drive (``<path>/nvmeof-<nqn>.img``, never shrunk, never deleted by
bsud once an export used it: only a file the failed attempt itself made, never written, is taken away), the
allowed hosts only, and a TCP port of its own on the configured address, checked free before anything is made.
Like LIO's, nvmet's configuration lives in the kernel only; bsud applies it again after each mount.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from bsud.exports.base import ExportKind, ExportState
from bsud.exports.files import (PROC_NET, ExportError, MadeFiles, backing_file, check_backing_file, endpoint,
                                     plain_address, port_busy, port_listening)
from bsud.exports.nvmeof_target import NVMET, Subsystem, identity, model, read_attr, write_attr
from bsud.host.kernel import CONFIGFS, load_modules
from bsud.host.kernel import TOOLS as KERNEL_TOOLS
from bsud.logs import get_logger
from bsud.naming import GIB
from bsud.runner import Runner

#: nvmet port ids bsud gives its ports (any free one from here).
FIRST_PORT_ID = 6100

log = get_logger("bsud.exports")

class NvmetTcp(ExportKind):
    kind = "nvmeof"
    tools = KERNEL_TOOLS

    def __init__(self, runner: Runner, configfs: Path = CONFIGFS, proc_net: Path = PROC_NET) -> None:
        super().__init__(runner)
        self.root = configfs / NVMET.name
        self.proc_net = proc_net

    # -- reading -------------------------------------------------------------------------------

    def ours(self, drive: str) -> dict[str, Subsystem]:
        """The drive's subsystems as nvmet has them (by their model string)."""
        found: dict[str, Subsystem] = {}
        subsystems = self.root / "subsystems"
        if not subsystems.is_dir():
            return found
        for sub in sorted(subsystems.iterdir()):
            if read_attr(sub / "attr_model") != model(drive):
                continue
            ns = sub / "namespaces" / "1"
            file = read_attr(ns / "device_path") if read_attr(ns / "enable") == "1" else ""
            hosts = frozenset(p.name for p in (sub / "allowed_hosts").iterdir()) \
                if (sub / "allowed_hosts").is_dir() else frozenset()
            if read_attr(sub / "attr_allow_any_host") == "1":
                hosts = frozenset({"*"})
            address, port = "", 0
            for p in self._ports():
                if (p / "subsystems" / sub.name).is_symlink():
                    address, port = read_attr(p / "addr_traddr"), int(read_attr(p / "addr_trsvcid") or 0)
                    break
            found[sub.name] = Subsystem(sub.name, file, hosts, address, port)
        return found

    def _ports(self) -> list[Path]:
        ports = self.root / "ports"
        return sorted(ports.iterdir(), key=lambda p: int(p.name)) if ports.is_dir() else []

    def _listening(self, want: Subsystem) -> bool:
        """nvmet listens for this export: on its address and port exactly (not a listener elsewhere)."""
        return port_listening(want.address, want.port, self.proc_net)

    def _busy(self, want: Subsystem) -> str | None:
        """Why the export's address and port cannot be listened on by nvmet, or None. nvmet's own port on that
        address and port is no obstacle (the subsystem joins it)."""
        mine: dict[tuple[object, int], str] = {}
        for p in self._ports():
            try:
                mine[(plain_address(read_attr(p / "addr_traddr")), int(read_attr(p / "addr_trsvcid")))] = p.name
            except ValueError:
                continue
        if (plain_address(want.address), want.port) in mine:
            return None
        blockers = port_busy(want.address, want.port, self.proc_net)
        if not blockers:
            return None
        owner = mine.get((blockers[0].address, blockers[0].port))
        who = f"nvmet's port {owner} (another subsystem's)" if owner else "another program"
        return (f"port {endpoint(want.address, want.port)} is in use by {who} (listening on {blockers[0]}); free it "
                "or choose another address or port")

    def observe(self, drive: str, mount_path: str, exports: list) -> ExportState:
        if not self.root.is_dir():
            if not exports:
                return ExportState(self.kind, 0, applied=True, present=False, server="")
            return ExportState(self.kind, len(exports), applied=False, present=False,
                               server="not loaded (modules nvmet, nvmet-tcp)",
                               detail="; ".join(f"{e.nqn}: no subsystem (nvmet is not loaded yet)" for e in exports))
        ours = self.ours(drive)
        wanted = {e.nqn: Subsystem.of(mount_path, e) for e in exports}
        problems = [f"{nqn}: {'missing' if nqn not in ours else 'differs from the config'}"
                    for nqn, want in wanted.items() if ours.get(nqn) != want]
        extra = sorted(set(ours) - set(wanted))
        if extra:
            problems.append(f"subsystems no longer in the config: {', '.join(extra)}")
        deaf = [endpoint(w.address, w.port) for w in wanted.values() if not self._listening(w)]
        if not problems and deaf:
            problems.append(f"nothing listens on {', '.join(deaf)}")
        server = "nvmet: " + (f"not listening on {', '.join(deaf)}" if deaf else "listening")
        return ExportState(self.kind, len(exports), applied=not problems, present=bool(ours),
                           server=server if exports else "", detail="; ".join(problems))

    # -- changing ------------------------------------------------------------------------------

    def _load(self) -> None:
        load_modules(self.runner, ("nvmet", "nvmet-tcp"))
        if not self.root.is_dir():
            configfs = self.root.parent
            if not os.path.ismount(configfs):
                self.runner.run(["mount", "-t", "configfs", "configfs", str(configfs)], timeout=60)
        if not self.root.is_dir():
            raise ExportError(f"{self.root} is not there after loading nvmet")

    def _create(self, drive: str, want: Subsystem) -> None:
        """The subsystem, its namespace on its file (made before: see :meth:`apply`), its hosts and port."""
        sub = self.root / "subsystems" / want.nqn
        sub.mkdir()
        serial, ns_uuid = identity(drive, want.nqn)
        write_attr(sub / "attr_model", model(drive))
        write_attr(sub / "attr_serial", serial)
        write_attr(sub / "attr_allow_any_host", "0")
        for host in sorted(want.hosts):
            host_dir = self.root / "hosts" / host
            if not host_dir.is_dir():
                host_dir.mkdir()
            (sub / "allowed_hosts" / host).symlink_to(host_dir)
        ns = sub / "namespaces" / "1"
        ns.mkdir()
        write_attr(ns / "device_path", want.file)
        write_attr(ns / "device_uuid", ns_uuid)
        write_attr(ns / "device_nguid", ns_uuid)
        write_attr(ns / "enable", "1")
        port, made = self._port_for(want.address, want.port)
        try:
            (port / "subsystems" / want.nqn).symlink_to(sub)  # enables the port: binds address and port
        except OSError:
            if made:
                port.rmdir()
            raise

    def _port_for(self, address: str, number: int) -> tuple[Path, bool]:
        """The nvmet port on ``address:number``, made with a free id from :data:`FIRST_PORT_ID` if none (True)."""
        for p in self._ports():
            if read_attr(p / "addr_traddr") == address and read_attr(p / "addr_trsvcid") == str(number) \
                    and read_attr(p / "addr_trtype") == "tcp":
                return p, False
        used = {int(p.name) for p in self._ports()}
        port = self.root / "ports" / str(next(i for i in range(FIRST_PORT_ID, 65535) if i not in used))
        port.mkdir()
        write_attr(port / "addr_trtype", "tcp")
        write_attr(port / "addr_adrfam", "ipv6" if ipaddress.ip_address(address).version == 6 else "ipv4")
        write_attr(port / "addr_traddr", address)
        write_attr(port / "addr_trsvcid", str(number))
        return port, True

    def _delete(self, nqn: str) -> None:
        """A subsystem of bsud's, its links, and a port it leaves without subsystems (the file stays)."""
        sub = self.root / "subsystems" / nqn
        for p in self._ports():
            link = p / "subsystems" / nqn
            if link.is_symlink():
                link.unlink()
                if not any((p / "subsystems").iterdir()):
                    p.rmdir()
        for ns in sorted((sub / "namespaces").iterdir()) if (sub / "namespaces").is_dir() else []:
            write_attr(ns / "enable", "0")
            ns.rmdir()
        for host in list((sub / "allowed_hosts").iterdir()) if (sub / "allowed_hosts").is_dir() else []:
            host.unlink()
        if sub.is_dir():
            sub.rmdir()
        hosts = self.root / "hosts"
        for host in list(hosts.iterdir()) if hosts.is_dir() else []:
            try:
                host.rmdir()  # a host no subsystem allows any more (busy: still in use, left)
            except OSError:
                pass

    def apply(self, drive: str, mount_path: str, exports: list) -> bool:
        """Every precondition first (the mount, NQNs not taken, ports free, no file to shrink), then the files,
        then nvmet: an export that cannot come up leaves nothing made for it."""
        if not os.path.ismount(mount_path):
            raise ExportError(f"drive {drive!r} is not mounted on {mount_path}; not exporting it")
        self._load()
        wanted = {e.nqn: (Subsystem.of(mount_path, e), e.size_gib * GIB) for e in exports}
        ours = self.ours(drive)
        stale = [nqn for nqn in ours if nqn not in wanted]
        # A subsystem as configured whose port does not listen (nvmet lost its listener) is made again too:
        # linking it to a port is what makes nvmet listen.
        redo = [(w, s) for nqn, (w, s) in wanted.items() if ours.get(nqn) != w or not self._listening(w)]
        for want, size in wanted.values():
            check_backing_file(want.file, size, what=want.nqn, kind="namespace")
        if not stale and not redo:
            for want, size in wanted.values():  # a size given more: the file grows (never made here)
                if os.path.exists(want.file):
                    backing_file(want.file, size, what=want.nqn, kind="namespace")
            return False
        taken = [w.nqn for w, _ in redo if w.nqn not in ours and (self.root / "subsystems" / w.nqn).exists()]
        if taken:
            raise ExportError(f"NVMe-oF: subsystem {', '.join(taken)} exists and does not belong to drive {drive!r} "
                              f"(its model is not {model(drive)!r}); remove it or choose another NQN")
        # Checked before anything is made or taken down: a retry must not cut the clients, nor leave files, each time.
        busy = [f"{w.nqn}: {why}" for w, _ in redo if (why := self._busy(w))]
        if busy:
            raise ExportError(f"NVMe-oF export of drive {drive!r}: {'; '.join(busy)}")
        made = MadeFiles()
        redone = {w.nqn for w, _ in redo}
        try:
            for want, size in wanted.values():  # made for the exports being made; grown for the others
                if want.nqn in redone or os.path.exists(want.file):
                    made.make(want.file, size, what=want.nqn, kind="namespace")
        except (OSError, ExportError) as exc:
            made.undo()
            raise ExportError(f"NVMe-oF export of drive {drive!r}: cannot make its namespace's file: {exc}") from None
        backup = [ours[nqn] for nqn in stale + [w.nqn for w, _ in redo] if nqn in ours]
        try:
            for old in backup:
                self._delete(old.nqn)
            for want, _ in redo:
                self._create(drive, want)
            now = self.ours(drive)
            problems = [f"{w.nqn} is not as configured" for w, _ in wanted.values() if now.get(w.nqn) != w]
            problems += [f"nothing listens on {endpoint(w.address, w.port)}" for w, _ in wanted.values()
                         if not self._listening(w)]
            if problems:
                raise ExportError("; ".join(problems))
        except (OSError, ExportError) as exc:
            self._restore(drive, backup, [w for w, _ in redo])
            made.undo()
            raise ExportError(f"NVMe-oF: applying failed, the previous subsystems are back: {exc}") from None
        log.info("NVMe-oF subsystems applied", drive=drive, subsystems=[w.nqn for w, _ in redo], removed=stale)
        return True

    def _restore(self, drive: str, backup: list[Subsystem], made: list[Subsystem]) -> None:
        """Take away what a failed change made and put back what it removed."""
        try:
            for want in made:
                if want.nqn in self.ours(drive):
                    self._delete(want.nqn)
            for old in backup:
                if old.file:  # a subsystem whose namespace was not enabled is not put back half-made
                    self._create(drive, old)
        except OSError as exc:
            log.error("restoring the previous NVMe-oF subsystems failed", drive=drive, error=str(exc))

    def withdraw(self, drive: str) -> bool:
        ours = self.ours(drive)
        for nqn in ours:
            self._delete(nqn)
        left = self.ours(drive)
        if left:
            raise ExportError(f"NVMe-oF: still configured after withdrawing: {', '.join(sorted(left))}")
        return bool(ours)
