"""Observation with fakes (a scripted cloud listing and layout; no subprocess is mocked): how the cloud's tags,
the layout's state and the mount path become the planner's DriveObs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bsud.cloud.base import Attachment, Volume
from bsud.config import DriveConfig, Layout, Provider, Target
from bsud.host.layouts import LayoutState, StorageLayout
from bsud.host.safety import Probe
from bsud.naming import DRIVE_TAG, REMOVING, STATE_TAG
from bsud.reconcile.observe import observe_drive
from bsud.runner import Runner

from .test_sdnotify_snapshot import CountingCloud  # this VM is i-me; observation asks it nothing else


class ScriptedLayout(StorageLayout):
    """A layout whose observation is given; ``active_when`` decides what 'active' means, as each layout does."""

    kind = Layout.LVM

    def __init__(self, state: LayoutState, active_is_state: bool = True) -> None:
        super().__init__("d", Runner())
        self.state = state
        self.active_is_state = active_is_state

    def observe(self, devices):
        return self.state

    def drive_active(self, state, mounted):
        return state.active if self.active_is_state else mounted

    def is_own(self, found: Probe) -> bool:
        return False

    def join(self, *a): ...
    def ensure_filesystem(self, *a): ...
    def mount_source(self, devices): return "/dev/null"
    def can_grow(self, mount_point): return False
    def grow(self, mount_point): return False
    def remove_device(self, *a): ...
    def activate(self, devices): ...
    def deactivate(self, devices): ...


def volume(vid: str, *, here: bool = False, elsewhere: str | None = None, **tags: str) -> Volume:
    atts = []
    if here:
        atts.append(Attachment("i-me", "/dev/xvdq", "attached"))
    if elsewhere:
        atts.append(Attachment(elsewhere, "/dev/xvdq", "attached"))
    return Volume(id=vid, size_gib=10, state="in-use" if atts else "available", volume_type="gp2", zone="z-1a",
                  tags={DRIVE_TAG: "d", **tags}, attachments=tuple(atts))


def spec(tmp_path: Path) -> DriveConfig:
    return DriveConfig(name="d", target=Target.ONLINE, mount_path=str(tmp_path / "mnt"), layout=Layout.LVM)


def test_tags_and_attachments_become_volume_observations(tmp_path: Path):
    vols = [volume("vol-a", here=True, **{STATE_TAG: REMOVING}), volume("vol-b", elsewhere="i-other"),
            volume("vol-c")]
    obs, resolutions = observe_drive(spec(tmp_path), vols, CountingCloud([]), ScriptedLayout(LayoutState()))
    a, b, c = obs.volumes
    assert (a.attached_here, a.bookkeeping, a.device, a.member) == (True, REMOVING, None, False)  # no such disk here
    assert (b.attached_here, b.attached_elsewhere) == (False, "i-other")
    assert (c.attached_here, c.attached_elsewhere, c.bookkeeping, c.state) == (False, None, None, "available")
    assert resolutions == {}


def test_the_layout_state_reaches_the_planner(tmp_path: Path):
    state = LayoutState(has_filesystem=True, active=True, missing="VG d misses 1 of its 2 PVs", stale=("vdc",),
                        lv_missing=False, move_in_progress=True)
    obs, _ = observe_drive(spec(tmp_path), [], CountingCloud([]), ScriptedLayout(state))
    assert obs.storage == state and obs.active
    assert not obs.mounted and obs.usage is None and not obs.read_only
    # A layout for which 'active' means mounted: not mounted, so not active whatever its devices say.
    obs, _ = observe_drive(spec(tmp_path), [], CountingCloud([]), ScriptedLayout(state, active_is_state=False))
    assert not obs.active


def test_a_mount_path_holding_files_is_reported_once_there_is_a_filesystem(tmp_path: Path):
    s = spec(tmp_path)
    Path(s.mount_path).mkdir()
    (Path(s.mount_path) / "stray.txt").write_text("not ours")
    obs, _ = observe_drive(s, [], CountingCloud([]), ScriptedLayout(LayoutState(has_filesystem=True)))
    assert obs.mount_blocked and "is not empty" in obs.mount_blocked
    obs, _ = observe_drive(s, [], CountingCloud([]), ScriptedLayout(LayoutState(has_filesystem=False)))
    assert obs.mount_blocked is None  # nothing to mount yet: nothing to complain about


def test_a_stale_check_that_a_refresh_cannot_satisfy_is_turned_off():
    """If the kernel's holders links cannot be trusted, the LV would look stale for ever and the drive would stay
    in recovery, never scaling: after one refresh that changes nothing, the check is off."""
    from bsud.host.layouts import LvmLayout

    class StuckLvm:
        refreshed = 0

        def devices_file_enabled(self) -> bool:
            return False

        def stale_devices(self, lv_path: str) -> list[str]:
            return ["vdc"]

        def refresh(self, vg: str) -> None:
            self.refreshed += 1

    layout = LvmLayout("d", Runner())
    layout.lvm = StuckLvm()  # type: ignore[assignment]
    layout.refresh([])
    assert layout.lvm.refreshed == 1 and layout.stale_check is False


class ScriptedExporter:
    """An export kind whose system state is given (and whose reading can fail)."""

    def __init__(self, kind: str, state=None, error: str | None = None, counters=None, clients=None) -> None:
        self.kind, self.state, self.error, self.counters = kind, state, error, counters or {}
        self.client_counters = clients or {}

    def observe(self, drive, mount_path, exports):
        from bsud.errors import BsudError

        if self.error:
            raise BsudError(self.error)
        return self.state

    def stats(self, drive, exports):
        return self.counters

    def clients(self):
        return self.client_counters


def test_exports_of_every_kind_are_summed_up(tmp_path: Path):
    from bsud.exports.nfs import NfsExport
    from bsud.exports import ExportState
    from bsud.reconcile.observe import observe_exports

    s = spec(tmp_path).model_copy(update={"exports": (NfsExport(kind="nfs", clients=("*",)),)})
    applied = ExportState("nfs", 1, applied=True, present=True, server="nfsd: 8 threads")
    obs = observe_exports(s, {"nfs": ScriptedExporter("nfs", applied, counters={"nfs:/": {"write_bytes": 7}},
                                                      clients={"10.0.0.5": {"read_bytes": 3}})})
    assert (obs.wanted, obs.in_sync, obs.present, obs.servers) == (1, True, True, ("nfs: nfsd: 8 threads",))
    assert obs.names == ("nfs:/",) and obs.stats == (("nfs:/", (("write_bytes", 7),)),)
    assert obs.clients == (("10.0.0.5", (("read_bytes", 3),)),)
    # A kind the drive no longer uses but whose file is still there: out of sync, to be withdrawn.
    left = ExportState("smb", 0, applied=False, present=True, server="smbd", detail="bsud-d.conf differs")
    obs = observe_exports(s, {"nfs": ScriptedExporter("nfs", applied), "smb": ScriptedExporter("smb", left)})
    assert not obs.in_sync and obs.present and obs.detail == "bsud-d.conf differs" and obs.servers == (
        "nfs: nfsd: 8 threads",)
    # A state that cannot be read is not in sync, and counted as present (withdrawn before an unmount).
    obs = observe_exports(s, {"nfs": ScriptedExporter("nfs", error="exportfs: not found")})
    assert not obs.in_sync and obs.present and "cannot read the nfs exports: exportfs: not found" in obs.detail


class ChangingExporter:
    """An export kind that records what it was asked to do (and can fail)."""

    def __init__(self, kind: str, error: str | None = None) -> None:
        self.kind, self.error, self.done = kind, error, []

    def _do(self, what: str) -> bool:
        from bsud.exports import ExportError

        self.done.append(what)
        if self.error:
            raise ExportError(self.error)
        return True

    def apply(self, drive, mount_path, exports):
        return self._do(f"apply {len(exports)}")

    def withdraw(self, drive):
        return self._do("withdraw")


def test_one_export_kind_failing_does_not_keep_the_others_from_being_applied(tmp_path: Path, monkeypatch):
    from bsud.exports.nfs import NfsExport
    from bsud.errors import BsudError
    from bsud.reconcile.execute import Executor
    from bsud.reconcile.model import ApplyExports, WithdrawExports

    monkeypatch.setattr("bsud.reconcile.execute.mounts.mount_at", lambda path: object())
    s = spec(tmp_path).model_copy(update={"exports": (NfsExport(kind="nfs", clients=("*",)),)})
    nfs, smb = ChangingExporter("nfs", error="exportfs -ra failed"), ChangingExporter("smb")
    executor = Executor(s, CountingCloud([]), ScriptedLayout(LayoutState()), Provider.LOCAL,
                        exporters={"nfs": nfs, "smb": smb})
    with pytest.raises(BsudError, match="exportfs -ra failed") as caught:
        executor.run(ApplyExports(reason="r"))
    assert caught.value.temporary
    assert (nfs.done, smb.done) == (["apply 1"], ["withdraw"])  # smb: the drive no longer shares over SMB
    with pytest.raises(BsudError, match="exportfs -ra failed"):
        executor.run(WithdrawExports(reason="r"))
    assert (nfs.done[-1], smb.done[-1]) == ("withdraw", "withdraw")
