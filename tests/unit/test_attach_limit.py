"""The VM takes no more volumes (issue 21): the planner holding creation and attachment back while the VM is full,
the engine blocking the drive with one line and trying again later, and the executor deleting the new volume it
could not attach — only that one. (max-bsu-count at load: test_attach_limit_config.py.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bsud.cloud.base import Attachment, Volume
from bsud.cloud.local import LocalCloud
from bsud.config import CloudSettings, DriveConfig, Layout, Provider, Target
from bsud.errors import AttachmentLimitError
from bsud.host.layouts import make_layout
from bsud.naming import DRIVE_TAG, NEW, STATE_TAG
from bsud.reconcile import engine
from bsud.reconcile.engine import ATTACH_LIMIT_HOLD_SECONDS, DriveReconciler
from bsud.reconcile.execute import Executor
from bsud.reconcile.model import AttachVolume, Blocked, CreateVolume, DriveObs, Outcome, UsageObs, VolumeObs
from bsud.reconcile.observe import CloudSnapshot
from bsud.reconcile.planner import plan
from bsud.runner import Runner
from bsud.storage import LayoutState

GIB = 1 << 30
REFUSED = ("drive 'd': this VM takes no more volumes (AttachmentLimitExceeded: limit reached): vol-9 could not be "
           "attached; the new volume was deleted (never attached, it held nothing). Lower max-bsu-count, detach "
           "volumes this VM does not need, or move it to an instance type that takes more volumes")


# --- planner: nothing created nor attached while the VM is full ----------------------------------------------------

def spec() -> DriveConfig:
    return DriveConfig(name="d", target=Target.ONLINE, mount_path="/mnt/d", layout=Layout.BTRFS, initial_size_gib=10)


def member(vid: str, size: int = 10) -> VolumeObs:
    return VolumeObs(id=vid, size_gib=size, state="in-use", attached_here=True, device=f"/dev/{vid}", member=True)


def mounted(*vols: VolumeObs, used: float, **kw: Any) -> DriveObs:
    size = sum(v.size_gib for v in vols if v.member) * GIB
    return DriveObs(name="d", volumes=vols, storage=LayoutState(has_filesystem=True), mounted=True, active=True,
                    usage=UsageObs(used=int(used * GIB), free=size - int(used * GIB), size=size), **kw)


FULL = "drive 'd': this VM takes no more volumes (…)"
AVAILABLE = VolumeObs(id="v2", size_gib=12, state="available")

PLANS = [
    ("full-vm-blocks-a-scale-up", mounted(member("v1"), used=9.5, attach_refused=FULL), ("Blocked", FULL)),
    ("full-vm-blocks-the-first-volume", DriveObs(name="d", attach_refused=FULL), ("Blocked", FULL)),
    ("full-vm-blocks-attaching", mounted(member("v1"), AVAILABLE, used=5, attach_refused=FULL), ("Blocked", FULL)),
    ("full-vm-leaves-a-settled-drive-online", mounted(member("v1"), used=5, attach_refused=FULL), ("Idle", "online")),
    ("scale-up-when-the-vm-takes-volumes", mounted(member("v1"), used=9.5), ("CreateVolume", None)),
    ("a-new-volume-is-attached", mounted(member("v1"), replace(AVAILABLE, bookkeeping=NEW), used=5),
     ("AttachVolume", None)),
    ("an-attached-new-volume-loses-its-mark-before-anything-is-written",
     mounted(member("v1"), replace(AVAILABLE, state="in-use", bookkeeping=NEW, attached_here=True, device="/dev/v2",
                                   blank=True), used=5), ("MarkVolume", "v2 is attached: dropping its 'new' mark")),
]


@pytest.mark.parametrize(("obs", "expected"), [p[1:] for p in PLANS], ids=[p[0] for p in PLANS])
def test_plan_while_the_vm_is_full(obs, expected):
    got = plan(spec(), obs)
    kind, reason = expected
    assert got.action.kind == kind
    if reason:
        assert got.action.reason == reason
    assert (got.phase == "blocked") == (kind == "Blocked")


# --- engine: blocked with one line, nothing created again before the hold ends --------------------------------------

class FakeExecutor:
    def __init__(self) -> None:
        self.done: list[str] = []
        self.created: str | None = None
        self.full = True

    def run(self, action, devices=None) -> Outcome:
        self.done.append(action.kind)
        if isinstance(action, AttachVolume) and self.full:
            error = AttachmentLimitError(action.volume_id, "AttachmentLimitExceeded: limit reached")
            error.drive, error.deleted = "d", True
            raise error
        return Outcome.CHANGED


class Scripted(DriveReconciler):
    next_obs: DriveObs

    def observe(self, max_age=None):
        self.last_obs = replace(self.next_obs, attach_refused=self._attach_held())
        return self.last_obs, []


@pytest.fixture
def full_vm(tmp_path: Path, monkeypatch) -> tuple[Scripted, FakeExecutor, list[float]]:
    clock = [1000.0]
    monkeypatch.setattr(engine.time, "monotonic", lambda: clock[0])
    cloud = LocalCloud(CloudSettings(provider="local", state_dir=str(tmp_path), instance_id="i-x"))
    rec = Scripted(spec(), cloud, CloudSnapshot(cloud), Provider.LOCAL)
    rec.executor = fake = FakeExecutor()  # type: ignore[assignment]
    return rec, fake, clock


NEEDS_SPACE = mounted(member("v1"), used=9.5)
NEW_VOLUME = mounted(member("v1"), VolumeObs(id="vol-9", size_gib=12, state="available", bookkeeping=NEW), used=9.5)


def test_a_refused_attach_blocks_the_drive_with_one_line_and_creates_nothing_more(full_vm):
    rec, fake, clock = full_vm
    rec.next_obs = NEEDS_SPACE
    assert rec.step().action.kind == "CreateVolume"
    rec.next_obs = NEW_VOLUME
    with pytest.raises(AttachmentLimitError) as info:
        rec.step()
    line = str(info.value)
    assert line.startswith(REFUSED + "; tried again at ") and line.endswith(" UTC, or at once on reload")
    assert "\n" not in line and not info.value.temporary
    assert (rec.status.phase, rec.status.action, rec.status.reason) == ("blocked", "Blocked", line)
    rec.next_obs = NEEDS_SPACE  # the new volume is gone: the drive still needs space
    for _ in range(20):  # full checks, scale-up triggers: nothing is created while the VM is full
        assert rec.step().action == Blocked(reason=line)
        clock[0] += 60
    assert fake.done == ["CreateVolume", "AttachVolume"]
    assert rec.status.last_error == line and rec.status.phase == "blocked"


def test_the_full_vm_is_tried_again_after_the_hold_and_at_once_on_reload(full_vm):
    rec, fake, clock = full_vm
    rec.next_obs = NEW_VOLUME
    with pytest.raises(AttachmentLimitError):
        rec.step()
    rec.next_obs = NEEDS_SPACE
    assert rec.step().action.kind == "Blocked"
    clock[0] += ATTACH_LIMIT_HOLD_SECONDS + 1
    assert rec.step().action.kind == "CreateVolume"  # a temporary block never parks a drive
    rec.next_obs = NEW_VOLUME
    with pytest.raises(AttachmentLimitError):
        rec.step()
    rec.next_obs = NEEDS_SPACE
    assert rec.step().action.kind == "Blocked"
    rec.update_spec(rec.spec.model_copy(update={"max_bsu_count": 5}))  # the operator acted, then reloaded
    rec.executor = fake
    fake.full = False
    assert rec.step().action.kind == "CreateVolume"
    rec.next_obs = NEW_VOLUME
    assert rec.step().action.kind == "AttachVolume" and rec.status.last_error is None
    assert fake.done == ["AttachVolume", "CreateVolume", "AttachVolume", "CreateVolume", "AttachVolume"]


# --- executor: the new volume deleted, only when it verifiably never held anything ----------------------------------

class FullLocalCloud(LocalCloud):
    """The local provider without loop devices: a VM that takes no more volumes."""

    def loop_devices(self) -> dict[str, list[str]]:
        return {}

    def attach_volume(self, volume_id: str) -> str:
        raise AttachmentLimitError(volume_id, "AttachmentLimitExceeded: limit reached")


@pytest.fixture
def executor(tmp_path: Path) -> tuple[Executor, FullLocalCloud]:
    cloud = FullLocalCloud(CloudSettings(provider="local", state_dir=str(tmp_path), instance_id="i-x"))
    cloud.poll_interval = 0.01
    spec_ = DriveConfig(name="d", target=Target.ONLINE, mount_path=str(tmp_path / "mnt"), layout=Layout.BTRFS,
                        tags={"team": "db"})
    return Executor(spec_, cloud, make_layout(Layout.BTRFS, "d", Runner()), Provider.LOCAL, attach_timeout=5), cloud


def test_a_new_volume_the_vm_cannot_take_is_deleted(executor):
    run, cloud = executor
    run.run(CreateVolume(size_gib=3))
    (vol,) = cloud.list_volumes()
    assert vol.tags == {"team": "db", STATE_TAG: NEW, DRIVE_TAG: "d"}  # marked from its first moment
    with pytest.raises(AttachmentLimitError) as info:
        run.run(AttachVolume(volume_id=vol.id))
    assert info.value.deleted and info.value.drive == "d" and cloud.list_volumes() == []


@pytest.mark.parametrize("tags", [{}, {STATE_TAG: ""}, {STATE_TAG: "evacuated"}], ids=["unmarked", "mark-dropped",
                                                                                      "evacuated"])
def test_a_volume_that_may_hold_data_is_never_deleted_for_a_full_vm(executor, tags):
    run, cloud = executor
    vol = cloud.create_volume("d", 3, "gp2")
    for key, value in tags.items():
        cloud.set_tag(vol.id, key, value)
    with pytest.raises(AttachmentLimitError) as info:
        run.run(AttachVolume(volume_id=vol.id))
    assert not info.value.deleted and [v.id for v in cloud.list_volumes()] == [vol.id]
    assert "could not be attached. Lower max-bsu-count" in str(info.value)


def test_a_new_volume_attached_elsewhere_is_not_deleted(executor, monkeypatch):
    run, cloud = executor
    vol = cloud.create_volume("d", 3, "gp2")
    cloud.set_tag(vol.id, STATE_TAG, NEW)
    seen = cloud.get_volume(vol.id)
    other = Volume(**{**seen.__dict__, "state": "in-use", "attachments": (Attachment("i-other", "/dev/xvdb",
                                                                                     "attached"),)})
    monkeypatch.setattr(cloud, "get_volume", lambda _vid: other)
    with pytest.raises(AttachmentLimitError) as info:
        run.run(AttachVolume(volume_id=vol.id))
    assert not info.value.deleted


def test_attaching_a_new_volume_drops_its_mark_before_anything_else(executor, monkeypatch):
    from bsud.errors import CloudTimeout

    run, cloud = executor
    run.run(CreateVolume(size_gib=3))
    (vol,) = cloud.list_volumes()
    monkeypatch.setattr(cloud, "attach_volume", lambda _vid: "/dev/xvdb")

    def slow(volume_id: str, timeout: float = 0) -> Volume:
        raise CloudTimeout(volume_id, ["attached"], "attaching", timeout)
    monkeypatch.setattr(cloud, "wait_attached", slow)
    with pytest.raises(CloudTimeout):
        run.run(AttachVolume(volume_id=vol.id))
    assert cloud.get_volume(vol.id).tags[STATE_TAG] == ""  # attach asked for: no longer "never attached"
