"""One drive's reconcile step: observe → plan → execute the first action → (next step observes again)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bsud.cloud.base import CloudProvider
from bsud.config import DriveConfig, Provider, volume_limits
from bsud.errors import BsudError
from bsud.host.layouts import StorageLayout, make_layout
from bsud.logs import get_logger
from bsud.reconcile.execute import Executor
from bsud.reconcile.model import Blocked, DriveObs, Idle, Plan, Wait
from bsud.reconcile.observe import CloudSnapshot, observe_drive
from bsud.reconcile.planner import plan
from bsud.runner import Runner

log = get_logger("bsud.reconcile")

#: The same action planned this many times in a row means it has no effect: stop and say so.
REPEAT_LIMIT = 8


@dataclass
class DriveStatus:
    name: str
    target: str
    layout: str
    mount_path: str
    phase: str = "starting"
    action: str = ""
    reason: str = ""
    size_gib: int = 0
    used_percent: float | None = None
    volumes: list[dict[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    last_error: str | None = None
    updated: float = 0.0

    def line(self) -> str:
        used = f"{self.used_percent:.1f}%" if self.used_percent is not None else "-"
        text = f"{self.name}: {self.phase} ({len(self.volumes)} volumes, {self.size_gib} GiB, used {used})"
        if self.last_error:
            text += f" error: {self.last_error}"
        return text


class DriveReconciler:
    def __init__(self, spec: DriveConfig, cloud: CloudProvider, snapshot: CloudSnapshot, provider: Provider,
                 runner: Runner | None = None) -> None:
        self.spec = spec
        self.cloud = cloud
        self.snapshot = snapshot
        self.provider = provider
        self.runner = runner or Runner()
        self.layout: StorageLayout = make_layout(spec.layout, spec.name, self.runner)
        self.executor = Executor(spec, cloud, self.layout, provider)
        limits = volume_limits(provider, spec.disk_type)
        self.max_volume_gib = limits.max_size if limits else 14901
        self.status = DriveStatus(spec.name, spec.target.value, spec.layout.value, spec.mount_path)
        self.last_plan: Plan | None = None
        self._repeats = 0
        self._previous: object = None

    def update_spec(self, spec: DriveConfig) -> None:
        self.__init__(spec, self.cloud, self.snapshot, self.provider, self.runner)  # type: ignore[misc]

    def observe(self, max_age: float | None = None) -> tuple[DriveObs, list[str]]:
        volumes = self.snapshot.by_drive(max_age).get(self.spec.name, [])
        obs, resolutions = observe_drive(self.spec, volumes, self.cloud, self.layout)
        return obs, [r.device for r in resolutions.values()]

    def plan_now(self, max_age: float | None = None) -> tuple[DriveObs, Plan]:
        obs, _ = self.observe(max_age)
        return obs, plan(self.spec, obs, self.max_volume_gib)

    def _record(self, obs: DriveObs, current: Plan) -> None:
        st = self.status
        st.phase, st.action, st.reason = current.phase, current.action.kind, current.action.reason
        st.notes = list(current.notes)
        st.size_gib = sum(v.size_gib for v in obs.volumes if v.state not in ("deleting", "deleted"))
        st.used_percent = round(obs.usage.used_percent, 2) if obs.usage else None
        st.volumes = [{"id": v.id, "size_gib": v.size_gib, "state": v.state, "device": v.device,
                       "member": v.member, **({"bookkeeping": v.bookkeeping} if v.bookkeeping else {})}
                      for v in obs.volumes]
        st.updated = time.time()

    def step(self, max_age: float | None = None) -> Plan:
        """Observe, plan, do the first action. Returns the plan that was acted on."""
        obs, devices = self.observe(max_age)
        current = plan(self.spec, obs, self.max_volume_gib)
        self._record(obs, current)
        self.last_plan = current
        action = current.action
        if isinstance(action, Idle | Wait):
            log.debug("drive", drive=self.spec.name, phase=current.phase, action=action.kind, reason=action.reason)
            self.status.last_error = None if isinstance(action, Idle) else self.status.last_error
            return current
        if isinstance(action, Blocked):
            log.warning("drive blocked", drive=self.spec.name, reason=action.reason)
            self.status.last_error = action.reason
            return current
        if self.last_plan is not None and self._previous == action:
            self._repeats += 1
        else:
            self._repeats = 0
        self._previous = action
        if self._repeats >= REPEAT_LIMIT:
            self.status.phase = "blocked"
            self.status.last_error = (f"{action.kind} was done {self._repeats} times in a row without effect "
                                      f"({action.reason}); see the log")
            log.error("no progress", drive=self.spec.name, action=action.kind, repeats=self._repeats)
            raise BsudError(self.status.last_error, temporary=True)
        log.info("step", drive=self.spec.name, phase=current.phase, action=action.kind, reason=action.reason,
                 **{k: v for k, v in action.__dict__.items() if k != "reason" and v not in (None, "")})
        try:
            self.executor.run(action, devices)
            self.status.last_error = None
        finally:
            if action.changes_cloud:
                self.snapshot.invalidate()
        return current

    def run_until_settled(self, max_steps: int = 200, wait: float = 0.5) -> Plan:
        """Step until Idle (or Blocked); for the CLI and tests. Temporary errors are retried."""
        last: Plan | None = None
        for _ in range(max_steps):
            try:
                last = self.step(max_age=0)
            except BsudError as exc:
                if not exc.temporary:
                    raise
                log.info("temporary error, retrying", drive=self.spec.name, error=str(exc))
                time.sleep(wait)
                continue
            if isinstance(last.action, Idle | Blocked):
                return last
            if isinstance(last.action, Wait):
                time.sleep(wait)
        raise BsudError(f"drive {self.spec.name!r} did not settle within {max_steps} steps "
                        f"(last: {last.action.kind if last else 'none'})", temporary=True)
