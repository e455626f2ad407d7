"""DRBD, as far as bsud reads and touches it for a highly available drive: the state of the resource on the drive's
LV, and ``drbdadm resize`` once both nodes' LVs have grown. bsud never brings a resource up or down, promotes,
demotes or mounts it: drbd-reactor's promoter (or the operator) does.

``drbdadm role|cstate|dstate`` answer the same way with DRBD 8.4 (Debian's kernel; drbd-utils 9 runs its 8.4 tools
for it) and DRBD 9: one word per side, ``local/peer`` (9 prints the local role alone). A resource that is not up
answers a non-zero exit code. The device's size is read from sysfs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bsud.errors import BsudError
from bsud.runner import Runner
from bsud.storage import SECTOR, Replication


class DrbdError(BsudError):
    pass


def _sides(text: str) -> tuple[str, str]:
    """``UpToDate/Inconsistent`` → (local, peer); one word → (word, '')."""
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    local, _, peer = first.partition("/")
    return local, peer


@dataclass(frozen=True)
class DrbdResource:
    """drbdadm for one resource."""

    runner: Runner
    name: str

    def _ask(self, what: str) -> str | None:
        """``drbdadm <what> <resource>``'s answer; None when the resource is not up (or not configured)."""
        # A resource that is not up answers non-zero: an answer, not a failure to log.
        done = self.runner.run(["drbdadm", what, self.name], check=False, ok_codes=range(256), quiet=True, timeout=30)
        if done.returncode != 0:
            return None
        return done.stdout.strip()

    def device(self) -> str | None:
        """The resource's device from its configuration (``drbdadm sh-dev``); None when it is not configured."""
        answer = self._ask("sh-dev")
        return answer.splitlines()[0].strip() if answer else None

    def backing_device(self) -> str | None:
        """The resource's lower-level device (``drbdadm sh-ll-dev``); None when it is not configured."""
        answer = self._ask("sh-ll-dev")
        return answer.splitlines()[0].strip() if answer else None

    def observe(self, device: str | None, backing: str, backing_bytes: int) -> Replication:
        """The resource's state on this node. ``device``: the configured one (None: asked of drbdadm); ``backing``:
        the drive's LV, which must be the resource's disk; ``backing_bytes``: the LV's size."""
        configured = self.backing_device()
        dev = device or self.device()
        if dev is None or configured is None:
            return Replication(self.name, device=dev, configured=False, backing_size=backing_bytes)
        if os.path.realpath(configured) != os.path.realpath(backing):
            return Replication(self.name, device=dev, error=f"DRBD resource {self.name!r} has its disk on "
                                                            f"{configured}, not on the drive's LV {backing}")
        role = self._ask("role")
        if role is None:
            return Replication(self.name, device=dev, backing_size=backing_bytes)
        local_role, peer_role = _sides(role)
        local_disk, peer_disk = _sides(self._ask("dstate") or "")
        connection = _sides(self._ask("cstate") or "")[0]
        return Replication(self.name, device=dev, up=True, role=local_role, peer_role=peer_role,
                           connection=connection, disk=local_disk, peer_disk=peer_disk, size=device_bytes(dev),
                           backing_size=backing_bytes)

    def resize(self, assume_peer_has_space: bool = False) -> None:
        """``drbdadm resize``: the device takes the backing devices' new size (the smaller of both nodes' while
        connected), the new area taken as in sync (``--assume-clean``): it is made of fresh cloud volumes on both
        nodes, which read zeros, and the filesystem reads nothing there it did not write (through DRBD, to both) —
        a resync would copy nothing of use over the replication link, during the very burst that asked for the space.
        ``assume_peer_has_space``: while disconnected, grow beyond what the peer last said it had (it must have at
        least as much by the time it connects again, or DRBD refuses the connection); DRBD then marks the new area
        out of sync, resynced at the next connection."""
        option = "--assume-peer-has-space" if assume_peer_has_space else "--assume-clean"
        self.runner.run(["drbdadm", "--", option, "resize", self.name], timeout=300)


def device_bytes(device: str) -> int:
    """A block device's size from sysfs (0 when sysfs does not show it)."""
    name = os.path.basename(os.path.realpath(device))
    try:
        with open(f"/sys/class/block/{name}/size") as fh:
            return int(fh.read().strip() or 0) * SECTOR
    except (OSError, ValueError):
        return 0
