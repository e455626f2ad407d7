"""The daemon's drives: one worker per drive of the config (started, given a reloaded spec, let go), what they say
together (which are not mounted, which thread is stuck, their statuses), the host's block device events routed to the
drives they concern, and their stop."""

from __future__ import annotations

import time

from bsud.config import Config, Target
from bsud.logs import get_logger
from bsud.reconcile.model import DriveObs
from bsud.reconcile.report import DriveStatus
from bsud.worker import DriveWorker, WorkerContext

log = get_logger("bsud.daemon")


class Drives:
    def __init__(self, context: WorkerContext) -> None:
        self.context = context
        self.snapshot = context.snapshot
        #: By drive name (the daemon's ``workers`` is this very dict).
        self.workers: dict[str, DriveWorker] = {}

    def apply(self, config: Config) -> None:
        """A worker for each drive of ``config``: new ones started, the others given their spec; a drive no longer
        in it is left as it is (no longer managed)."""
        wanted = {d.name: d for d in config.drives}
        for name in list(self.workers):
            if name not in wanted:
                log.info("drive removed from the config: left as it is, no longer managed", drive=name)
                self.workers.pop(name).stop()
        for name, spec in wanted.items():
            if name in self.workers:
                self.workers[name].update(spec)
            else:
                worker = DriveWorker(self.context, spec)
                self.workers[name] = worker
                worker.start()

    def statuses(self) -> dict[str, DriveStatus]:
        return {name: w.reconciler.status for name, w in self.workers.items()}

    def not_mounted(self) -> list[str]:
        """Drives whose target is online and that are not mounted (as their last observation saw them); a highly
        available drive counts as mounted once its LV (DRBD's disk) is active: the gateway mounts it, on the Primary
        only."""
        return [name for name, w in self.workers.items() if w.reconciler.spec.target == Target.ONLINE
                and not (w.reconciler.last_obs is not None and _ready(w.reconciler.last_obs))]

    def stuck(self, now: float) -> str | None:
        """Why a drive's thread looks stuck (the first one found), or None."""
        return next((why for w in self.workers.values() if (why := w.overdue(now))), None)

    def block_event(self, action: str, device: str) -> None:
        """A block device came, went or changed (udev): the drive it belongs to — or, for one that came, a drive
        missing a member or a highly available drive (its Primary's bsud attaches the volumes it makes for this
        node) — looks again at once, on a fresh cloud listing. This is how a volume taken away behind bsud's back is
        noticed within seconds without listing the cloud every minute."""
        woken = []
        for name, worker in self.workers.items():
            obs = worker.reconciler.last_obs
            if obs is None:
                continue
            ours = any(v.device == device for v in obs.volumes)
            lacking = bool(obs.storage.missing) or any(v.attached_here and v.device is None for v in obs.volumes)
            replicated = obs.storage.replication is not None
            if ours or (action == "add" and (lacking or replicated)):
                woken.append(name)
        if not woken:
            return
        log.info("block device event: looking again", action=action, device=device, drives=woken)
        self.snapshot.invalidate()
        for name in woken:
            self.workers[name].poke()

    def stop(self, timeout: float) -> None:
        """Let each drive finish its current step, for ``timeout`` seconds at most altogether; those still in one
        are abandoned (a long pvmove or relocation resumes on the next start)."""
        for worker in self.workers.values():
            worker.stop()
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            worker.join(max(0.1, deadline - time.monotonic()))
        still = [w.reconciler.spec.name for w in self.workers.values() if w.is_alive()]
        if still:
            log.warning("abandoning long steps; they resume on the next start", drives=still)


def _ready(obs: DriveObs) -> bool:
    return obs.mounted or (obs.storage.replication is not None and obs.storage.active)
