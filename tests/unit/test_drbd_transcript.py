"""A highly available drive's layout (lvm under DRBD) replayed from command transcripts at the runner's seam
(tests/unit/transcript.py): what bsud reads of the resource, that it never makes a filesystem on the LV, that a
joined volume grows the LV at once, and ``drbdadm resize`` — CHANGED, then UNCHANGED on the re-run, and a temporary
error while the peer's LV is still the smaller. The DRBD device's size is sysfs's (``device_bytes``: the only thing
replaced). drbdadm's answers are DRBD 8.4's (Debian 12's kernel, drbd-utils 9.22)."""

from __future__ import annotations

import pytest

from bsud.host import drbd
from bsud.host.drbd import DrbdError, DrbdResource
from bsud.host.layouts import ReplicatedLvmLayout, make_layout
from bsud.config import Layout
from bsud.storage import usable_bytes

from .test_lvm_transcript import GIB, LVS, VGS, lv, report, vg
from .transcript import Reply, TranscriptRunner

LV_PATH = "/dev/d/bsud"


def drbdadm(what: str, out: str = "", rc: int = 0, err: str = "") -> Reply:
    return Reply(("drbdadm", what, "data"), rc=rc, stdout=out, stderr=err)


CONFIGURED = [drbdadm("sh-ll-dev", f"{LV_PATH}\n"), drbdadm("sh-dev", "/dev/drbd1000\n")]
DOWN = drbdadm("role", rc=10, err="data: No such resource\n")  # 8.4: the resource is not up
#: A connected resize: the new area, fresh volumes on both nodes, taken as in sync.
CLEAN = ("drbdadm", "--", "--assume-clean", "resize", "data")


def resource(replies: list[Reply]) -> tuple[DrbdResource, TranscriptRunner]:
    runner = TranscriptRunner(replies)
    return DrbdResource(runner, "data"), runner


@pytest.fixture
def sizes(monkeypatch):
    """The DRBD device's size as sysfs answers it, one value per read (the last one repeated)."""
    answers: list[int] = []

    def device_bytes(device: str) -> int:
        assert device == "/dev/drbd1000"
        return answers.pop(0) if len(answers) > 1 else answers[0]
    monkeypatch.setattr(drbd, "device_bytes", device_bytes)
    monkeypatch.setattr("bsud.host.layouts.replicated.device_bytes", device_bytes)
    return answers


def test_a_primary_connected_to_its_peer(sizes):
    sizes.append(10 * GIB)
    res, runner = resource([*CONFIGURED, drbdadm("role", "Primary/Secondary\n"), drbdadm("dstate", "UpToDate/UpToDate\n"),
                            drbdadm("cstate", "Connected\n")])
    seen = res.observe(None, LV_PATH, 11 * GIB)
    assert (seen.up, seen.primary, seen.connected, seen.peer_role, seen.disk, seen.peer_disk) == \
        (True, True, True, "Secondary", "UpToDate", "UpToDate")
    assert (seen.device, seen.size, seen.backing_size, seen.error) == ("/dev/drbd1000", 10 * GIB, 11 * GIB, None)
    assert seen.room == usable_bytes(11 * GIB) - 10 * GIB > 0.99 * GIB


def test_a_secondary_waiting_for_its_peer_and_drbd_9s_one_word_role(sizes):
    sizes.append(10 * GIB)
    res, _ = resource([*CONFIGURED, drbdadm("role", "Secondary\n"), drbdadm("dstate", "UpToDate/DUnknown\n"),
                       drbdadm("cstate", "WFConnection\n")])
    seen = res.observe("/dev/drbd1000", LV_PATH, 10 * GIB)
    assert (seen.up, seen.primary, seen.connected, seen.role, seen.peer_role, seen.peer_disk) == \
        (True, False, False, "Secondary", "", "DUnknown")


def test_a_resource_that_is_not_up_or_not_on_the_drives_lv():
    res, _ = resource([*CONFIGURED, DOWN])
    seen = res.observe(None, LV_PATH, 10 * GIB)
    assert not seen.up and seen.error is None and seen.room == 0
    res, _ = resource([drbdadm("sh-ll-dev", "/dev/sdz\n"), drbdadm("sh-dev", "/dev/drbd1000\n")])
    assert "has its disk on /dev/sdz, not on the drive's LV /dev/d/bsud" in str(res.observe(None, LV_PATH, GIB).error)
    res, _ = resource([drbdadm("sh-ll-dev", rc=10, err="'data' not defined in your config\n"),
                       drbdadm("sh-dev", rc=10)])
    seen = res.observe(None, LV_PATH, GIB)
    assert not seen.configured and not seen.up and seen.error is None


def layout(replies: list[Reply]) -> tuple[ReplicatedLvmLayout, TranscriptRunner]:
    runner = TranscriptRunner(replies)
    made = make_layout(Layout.LVM, "d", runner, ("data", "/dev/drbd1000"))
    assert isinstance(made, ReplicatedLvmLayout)
    return made, runner


def lv_replies(lv_bytes: int, vg_free: int = 0) -> list[Reply]:
    return [Reply(VGS, stdout=report("vg", [vg(lv_bytes + vg_free, vg_free, 2)])),
            Reply(LVS, stdout=report("lv", [lv(lv_bytes, "/dev/xvdb(0),/dev/xvdc(0)")]))]


def test_resize_changes_once_then_nothing(sizes):
    lv_bytes = 22 * GIB
    sizes += [10 * GIB, usable_bytes(lv_bytes)]
    made, runner = layout([*lv_replies(lv_bytes), Reply(CLEAN)])
    assert made.resize_replica(assume_peer_has_space=False) is True
    assert runner.ran(*CLEAN) == 1
    assert made.resize_replica(assume_peer_has_space=False) is False  # the device has all the LV offers
    assert runner.ran(*CLEAN) == 1


def test_resize_while_the_peers_lv_is_smaller_is_a_temporary_error_tried_again_soon(sizes):
    sizes += [10 * GIB]
    made, runner = layout([*lv_replies(22 * GIB), Reply(CLEAN)])
    with pytest.raises(DrbdError) as info:
        made.resize_replica(assume_peer_has_space=False)
    assert info.value.temporary and info.value.delay == 2.0 and "peer's disk is still the smaller" in str(info.value)


def test_resize_of_a_disconnected_primary_assumes_the_peer_has_the_space(sizes):
    sizes += [10 * GIB, 20 * GIB]
    assume = ("drbdadm", "--", "--assume-peer-has-space", "resize", "data")
    made, runner = layout([*lv_replies(22 * GIB), Reply(assume)])
    assert made.resize_replica(assume_peer_has_space=True) and runner.ran(*assume) == 1


def test_the_lv_is_made_but_never_a_filesystem_on_it():
    made, runner = layout([*lv_replies(10 * GIB)])
    assert made.ensure_filesystem() is False  # the LV is there and active: DRBD's, nothing to do
    assert not any(argv[0] in ("mkfs.btrfs", "blkid", "wipefs") for argv in runner.argvs())
    created = [Reply(VGS, stdout=report("vg", [vg(10 * GIB, 10 * GIB, 1, 0)])), Reply(LVS, stdout=report("lv", [])),
               Reply(("lvm", "lvcreate", "-n", "bsud", "-l", "100%FREE", "--wipesignatures", "n", "d"))]
    made, runner = layout(created)
    assert made.ensure_filesystem() is True
    assert runner.argvs()[-1][:2] == ("lvm", "lvcreate") and not any(a[0].startswith("mkfs") for a in runner.argvs())


def test_the_gateway_mounts_it_never_bsud():
    made, runner = layout([])
    with pytest.raises(Exception, match="mounted by the gateway on the Primary, never by bsud"):
        made.mount([], "/srv/data")
    with pytest.raises(Exception, match="a volume never leaves it"):
        made.remove_device("/dev/xvdc", "/srv/data")
    assert runner.argvs() == []


def test_a_grown_vg_grows_the_lv_even_with_nothing_mounted():
    extend = Reply(("lvm", "lvextend", "-l", "+100%FREE", "d/bsud"))
    made, runner = layout([*lv_replies(10 * GIB, vg_free=12 * GIB), extend])
    assert made.grow("/nonexistent/bsud-drbd-transcript") is True
    assert runner.ran(*extend.argv) == 1


def test_a_resize_drbdadm_refuses_is_tried_again_soon_not_backed_off(sizes):
    """A resize refused (a resync under way, the peer's disk too small) passes by itself: temporary, 2 s."""
    sizes += [10 * GIB]
    made, _ = layout([*lv_replies(22 * GIB), Reply(CLEAN, rc=11,
                                                   stderr="State change failed: (-15) Resize not allowed during "
                                                          "resync.\n")])
    with pytest.raises(DrbdError) as info:
        made.resize_replica(assume_peer_has_space=False)
    assert info.value.temporary and info.value.delay == 2.0 and "Resize not allowed during resync" in str(info.value)
