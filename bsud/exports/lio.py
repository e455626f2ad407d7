"""The ``iscsi`` kind's host side (its config and rules: ``bsud.exports.iscsi``): iSCSI through LIO, the kernel
target, driven with rtslib-fb (the library targetcli is built on; it reads and writes configfs,
which is LIO's whole interface, so bsud need not write that tree by hand).

Each export is a sparse file in the drive (``<path>/iscsi-<iqn>.img``, never shrunk, never deleted once a target used
it: only a file a failed attempt itself made, never written, is taken away) as
a write-through fileio backstore named ``bsud_<drive>_<n>``; a target with the IQN, TPG 1 on ``0.0.0.0:3260``,
LUN 0, one ACL per initiator mapping LUN 0, and CHAP on the TPG's ACLs when configured. Backstores named after the
drive are how bsud recognises what is its own: it withdraws only those and the targets serving them.

LIO's configuration lives in the kernel only: bsud does not save it (the target service would restore it at boot
before the drive is mounted); it applies it again after each mount.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from bsud.exports.base import ExportKind, ExportState
from bsud.exports.files import (PROC_NET, ExportError, MadeFiles, backing_file, check_backing_file, plain_address,
                                     port_busy, port_listening)
from bsud.exports.iscsi_target import ADDRESS, PORT, IscsiExport, Wanted, backstore_name
from bsud.host.kernel import CONFIGFS, load_modules
from bsud.host.kernel import TOOLS as KERNEL_TOOLS
from bsud.logs import get_logger
from bsud.runner import Runner

log = get_logger("bsud.exports")

#: Where LIO keeps what it persists itself (reservations, ALUA state); rtslib points the kernel there.
DBROOT = Path("/etc/target")


def lio_errors(method: Callable) -> Callable:
    """rtslib's and configfs's errors as :class:`ExportError` (retried, shown in the status), never a crash."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        from rtslib_fb import RTSLibError

        try:
            return method(*args, **kwargs)
        except (RTSLibError, OSError) as exc:
            raise ExportError(f"LIO: {exc}") from None
    return wrapper


class Lio(ExportKind):
    kind = "iscsi"
    tools = KERNEL_TOOLS

    def __init__(self, runner: Runner, configfs: Path = CONFIGFS, proc_net: Path = PROC_NET) -> None:
        super().__init__(runner)
        self.configfs = configfs
        self.proc_net = proc_net

    # -- reading -------------------------------------------------------------------------------

    def _loaded(self) -> bool:
        """LIO's iSCSI fabric is in configfs (reading it then changes nothing: rtslib loads nothing)."""
        return (self.configfs / "target" / "iscsi").is_dir()

    def _portals(self) -> set[tuple[object, int]]:
        """Every network portal LIO has, any target's (``<tpg>/np/<address>:<port>`` in configfs): LIO listens
        there itself, and a portal on the same address and port is shared, not a conflict."""
        found: set[tuple[object, int]] = set()
        for np in (self.configfs / "target" / "iscsi").glob("*/tpgt_*/np/*"):
            address, _, port = np.name.rpartition(":")
            try:
                found.add((plain_address(address.strip("[]")), int(port)))
            except ValueError:
                continue
        return found

    def _listening(self) -> bool:
        """LIO listens on 0.0.0.0:3260: it has that portal and it is up (not a listener of another program)."""
        return (plain_address(ADDRESS), PORT) in self._portals() and port_listening(ADDRESS, PORT, self.proc_net)

    def _busy(self) -> str | None:
        """Why LIO cannot listen on 0.0.0.0:3260, or None (free, or LIO's own portal there already)."""
        portals = self._portals()
        if (plain_address(ADDRESS), PORT) in portals:
            return None
        blockers = port_busy(ADDRESS, PORT, self.proc_net)
        if not blockers:
            return None
        mine = (blockers[0].address, blockers[0].port) in portals
        who = "a portal of another LIO target" if mine else "another program (another iSCSI target server?)"
        return (f"port {ADDRESS}:{PORT} is in use by {who}, listening on {blockers[0]}; free it (bsud's targets listen "
                "on every address)")

    def _ours(self, drive: str) -> dict:
        """{backstore name: (storage object, [targets whose LUNs use it])} for the drive's backstores."""
        from rtslib_fb import RTSRoot

        root = RTSRoot()
        prefix = backstore_name(drive, "x")[:-8]
        found = {so.name: (so, []) for so in root.storage_objects if so.name.startswith(prefix)}
        for target in root.targets:
            if target.fabric_module.name != "iscsi":
                continue
            for tpg in target.tpgs:
                for lun in tpg.luns:
                    name = lun.storage_object.name
                    if name in found and target not in found[name][1]:
                        found[name][1].append(target)
        return found

    def _differs(self, want: Wanted, ours: dict) -> str | None:
        """How LIO's state for one export differs from what is wanted, or None."""
        if want.backstore not in ours:
            return f"{want.iqn}: no backstore {want.backstore}"
        so, targets = ours[want.backstore]
        if so.plugin != "fileio" or so.udev_path != want.file or so.size != want.size or so.write_back:
            return f"{want.iqn}: backstore {want.backstore} is not the write-through file {want.file} of {want.size} B"
        target = next((t for t in targets if t.wwn == want.iqn), None)
        if target is None:
            return f"{want.iqn}: no target serves {want.backstore}"
        tpgs = list(target.tpgs)
        if len(tpgs) != 1 or not tpgs[0].enable:
            return f"{want.iqn}: its TPG is not enabled"
        tpg = tpgs[0]
        if not any(p.port == PORT for p in tpg.network_portals):
            return f"{want.iqn}: no portal on port {PORT}"
        acls = {acl.node_wwn: acl for acl in tpg.node_acls}
        if set(acls) != want.initiators:
            return f"{want.iqn}: initiators {sorted(acls)} instead of {sorted(want.initiators)}"
        for acl in acls.values():
            if not any(m.mapped_lun == 0 for m in acl.mapped_luns):
                return f"{want.iqn}: LUN 0 is not mapped for {acl.node_wwn}"
            if (acl.chap_userid or None, acl.chap_password or None) != (want.chap_user, want.chap_password):
                return f"{want.iqn}: CHAP of {acl.node_wwn} differs from the config"
        if str(tpg.get_attribute("authentication")) != ("1" if want.chap_user else "0"):
            return f"{want.iqn}: authentication is not {'on' if want.chap_user else 'off'}"
        return None

    @lio_errors
    def observe(self, drive: str, mount_path: str, exports: list[IscsiExport]) -> ExportState:
        if not self._loaded():
            if not exports:
                return ExportState(self.kind, 0, applied=True, present=False, server="")
            return ExportState(self.kind, len(exports), applied=False, present=False,
                               server="not loaded (LIO: modules target_core_mod, iscsi_target_mod)",
                               detail="; ".join(f"{e.iqn}: no target (LIO's iSCSI target is not loaded yet)"
                                                for e in exports))
        ours = self._ours(drive)
        wanted = [Wanted.of(drive, mount_path, e) for e in exports]
        problems = [p for w in wanted if (p := self._differs(w, ours))]
        extra = sorted(set(ours) - {w.backstore for w in wanted})
        if extra:
            problems.append(f"backstores no longer in the config: {', '.join(extra)}")
        listening = self._listening()
        if wanted and not problems and not listening:
            problems.append(f"nothing listens on port {PORT}")
        server = f"LIO: {'listening on' if listening else 'not listening on'} {PORT}"
        return ExportState(self.kind, len(exports), applied=not problems, present=bool(ours),
                           server=server if exports else "", detail="; ".join(problems))

    # -- changing ------------------------------------------------------------------------------

    def _load(self) -> None:
        """Load LIO's modules and mount configfs with bsud's runner (rtslib would do it through a shell)."""
        load_modules(self.runner, ("configfs", "target_core_mod", "target_core_file", "iscsi_target_mod"))
        if not os.path.ismount(self.configfs):
            self.runner.run(["mount", "-t", "configfs", "configfs", str(self.configfs)], timeout=60)
        DBROOT.mkdir(mode=0o755, exist_ok=True)  # as the targetcli package makes it; rtslib insists on it

    def _create(self, want: Wanted) -> None:
        from rtslib_fb import LUN, TPG, FabricModule, FileIOStorageObject, MappedLUN, NetworkPortal, NodeACL, Target

        # A unit serial derived from the backstore's name: made again (a change, drift, a reboot), the LUN is the
        # same disk to initiators and to multipath (whose WWID it is).
        serial = str(uuid.uuid5(uuid.NAMESPACE_OID, want.backstore))
        so = FileIOStorageObject(want.backstore, dev=want.file, size=want.size, write_back=False, wwn=serial)
        target = Target(FabricModule("iscsi"), want.iqn)
        tpg = TPG(target, 1)
        NetworkPortal(tpg, ADDRESS, PORT)
        lun = LUN(tpg, 0, so)
        tpg.set_attribute("generate_node_acls", "0")
        tpg.set_attribute("authentication", "1" if want.chap_user else "0")
        for initiator in sorted(want.initiators):
            acl = NodeACL(tpg, initiator)
            if want.chap_user:
                acl.chap_userid = want.chap_user
                acl.chap_password = want.chap_password
            MappedLUN(acl, 0, lun)
        tpg.enable = True

    @staticmethod
    def _delete(so, targets) -> None:
        """A target of bsud's and its backstore (the backing file stays)."""
        for target in targets:
            target.delete()
        so.delete()

    @lio_errors
    def apply(self, drive: str, mount_path: str, exports: list[IscsiExport]) -> bool:
        """Every precondition first (the mount, IQNs not taken, the port free, no file to shrink), then the files,
        then LIO: an export that cannot come up leaves nothing made for it."""
        if not os.path.ismount(mount_path):
            raise ExportError(f"drive {drive!r} is not mounted on {mount_path}; not exporting it")
        self._load()
        from rtslib_fb import RTSLibError, RTSRoot

        wanted = [Wanted.of(drive, mount_path, e) for e in exports]
        for want in wanted:
            check_backing_file(want.file, want.size, what=want.iqn, kind="LUN")
        ours = self._ours(drive)
        stale = [name for name in ours if name not in {w.backstore for w in wanted}]
        redo = [w for w in wanted if self._differs(w, ours)]
        if not stale and not redo and self._listening():
            for want in wanted:  # a size given more: the file grows (never made here)
                if os.path.exists(want.file):
                    backing_file(want.file, want.size, what=want.iqn, kind="LUN")
            return False
        # Another target (not bsud's) already using a wanted IQN is not taken over.
        mine = {t.wwn for _, targets in ours.values() for t in targets}
        taken = [w.iqn for w in redo for t in RTSRoot().targets if t.wwn == w.iqn and t.wwn not in mine]
        if taken:
            raise ExportError(f"iSCSI: target {', '.join(taken)} exists and does not belong to drive {drive!r} (its "
                              "LUN is not a backstore of the drive); remove it or choose another IQN")
        busy = self._busy() if wanted else None
        if busy:  # checked before anything is made or taken down: a retry must not cut the clients each time
            which = f"export {', '.join(w.iqn for w in redo)}" if redo else "exports"
            raise ExportError(f"iSCSI {which} of drive {drive!r}: {busy}")
        made = MadeFiles()
        redone = {w.iqn for w in redo}
        try:
            for want in wanted:  # made for the targets being made; grown for the others
                if want.iqn in redone or os.path.exists(want.file):
                    made.make(want.file, want.size, what=want.iqn, kind="LUN")
        except (OSError, ExportError) as exc:
            made.undo()
            raise ExportError(f"iSCSI export of drive {drive!r}: cannot make its LUN's file: {exc}") from None
        backup = {name: (so.dump(), [t.dump() for t in targets]) for name, (so, targets) in ours.items()
                  if name in stale or name in {w.backstore for w in redo}}
        try:
            for name in backup:
                self._delete(*ours[name])
            for want in redo:
                self._create(want)
            now = self._ours(drive)
            problems = [p for w in wanted if (p := self._differs(w, now))]
            if not problems and wanted and not self._listening():
                problems.append(f"nothing listens on {ADDRESS}:{PORT}")
            if problems:
                raise ExportError("; ".join(problems))
        except (RTSLibError, OSError, ExportError) as exc:
            self._restore(drive, backup)
            made.undo()
            raise ExportError(f"iSCSI: applying failed, the previous targets are back: {exc}") from None
        log.info("iSCSI targets applied", drive=drive, targets=[w.iqn for w in redo], removed=stale)
        return True

    def _restore(self, drive: str, backup: dict) -> None:
        """Put back the drive's targets as they were before a failed change."""
        from rtslib_fb import RTSRoot

        try:
            for so, targets in self._ours(drive).values():
                self._delete(so, targets)
            config = {"storage_objects": [so for so, _ in backup.values()],
                      "targets": [t for _, targets in backup.values() for t in targets]}
            errors = RTSRoot().restore(config)
            if errors:
                log.error("restoring the previous iSCSI targets reported errors", drive=drive, count=len(errors))
        except Exception as exc:  # noqa: BLE001 - reported with the failure that led here
            log.error("restoring the previous iSCSI targets failed", drive=drive, error=type(exc).__name__)

    @lio_errors
    def withdraw(self, drive: str) -> bool:
        if not self._loaded():
            return False
        ours = self._ours(drive)
        for so, targets in ours.values():
            self._delete(so, targets)
        left = self._ours(drive)
        if left:
            raise ExportError(f"iSCSI: still configured after withdrawing: {', '.join(sorted(left))}")
        return bool(ours)
