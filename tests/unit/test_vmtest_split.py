"""scripts/vmtest.py's split of the VM lane over parallel guests: balanced by weight, the systemd lane's files in one
systemd guest (one boot of systemd, not one per runner), the pair's files in one pair of guests; and the bridge's
routing of a pair's disks to the guest whose instance the volume is attached to."""

from __future__ import annotations

import os
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_vmtest():
    spec = importlib.util.spec_from_file_location("vmtest", ROOT / "scripts" / "vmtest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_systemd_files_share_one_guest_and_the_runners_are_balanced():
    vmtest = load_vmtest()
    files = sorted(f"tests/vm/{p.name}" for p in (ROOT / "tests" / "vm").glob("test_*.py"))
    runners = vmtest.split(files, 2)
    assert sorted(f for runner in runners for guest in runner for f in guest) == files  # each file once
    for lane, kind in ((vmtest.SYSTEMD_FILES, "systemd"), (vmtest.PAIR_FILES, "pair")):
        guests = [guest for runner in runners for guest in runner if any(Path(f).name in lane for f in guest)]
        assert len(guests) == 1 and {Path(f).name for f in guests[0]} == set(lane)
        assert vmtest.guest_kind(guests[0]) == kind
    loads = [sum(vmtest.WEIGHTS.get(Path(f).name, 120) for guest in runner for f in guest) for runner in runners]
    assert max(loads) - min(loads) <= max(vmtest.WEIGHTS.values()), loads
    (alone,) = vmtest.split(files, 1)
    special = vmtest.SYSTEMD_FILES | vmtest.PAIR_FILES
    assert [sorted(guest) for guest in alone] == [[f for f in files if Path(f).name not in special],
                                                  [f for f in files if Path(f).name in vmtest.SYSTEMD_FILES],
                                                  [f for f in files if Path(f).name in vmtest.PAIR_FILES]]
    assert vmtest.guest_kind(["-q", "tests/vm/test_boot.py"]) == "plain"
    assert vmtest.guest_kind(["tests/vm/test_ha_drbd.py::test_x"]) == "pair"


class FakeQmp:
    """Records QMP commands; every device_del is released at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def execute(self, command: str, **arguments: object) -> None:
        self.calls.append((command, arguments))

    def wait_event(self, name: str, device_id: str, timeout: float) -> bool:
        return True


def test_a_pairs_bridge_plugs_each_volume_into_the_guest_named_and_unplugs_it_from_there(tmp_path):
    vmtest = load_vmtest()
    qmps = {"a": FakeQmp(), "b": FakeQmp()}
    bridge = vmtest.Bridge(tmp_path, qmps)
    assert bridge.handle({"op": "plug", "volume": "vol-0a", "size_gib": 1, "node": "b"}) == {"ok": True}
    assert bridge.handle({"op": "plug", "volume": "vol-0b", "size_gib": 1}) == {"ok": True}  # default: a
    assert [c for c, _ in qmps["b"].calls] == ["blockdev-add", "device_add"]
    assert qmps["b"].calls[1][1]["serial"] == "vol-0a" and qmps["a"].calls[1][1]["serial"] == "vol-0b"
    assert (tmp_path / "vol-0a.img").stat().st_size == 1024**3  # sparse, like any guest's disk
    # one guest at a time: not into a while b has it; unplug goes to b, whatever the request says
    refused = bridge.handle({"op": "plug", "volume": "vol-0a", "size_gib": 1, "node": "a"})
    assert not refused["ok"] and "plugged into guest b" in refused["error"]
    assert not bridge.handle({"op": "delete", "volume": "vol-0a"})["ok"]
    assert bridge.handle({"op": "unplug", "volume": "vol-0a", "node": "a"}) == {"ok": True}
    assert [c for c, _ in qmps["b"].calls][2:] == ["device_del", "blockdev-del"] and len(qmps["a"].calls) == 2
    assert bridge.handle({"op": "delete", "volume": "vol-0a"}) == {"ok": True}
    assert not (tmp_path / "vol-0a.img").exists()
    missing = vmtest.Bridge(tmp_path, {"a": FakeQmp()}).handle({"op": "plug", "volume": "vol-0c", "size_gib": 1,
                                                                "node": "b"})
    assert not missing["ok"] and "no guest 'b'" in missing["error"]


class SlowQmp(FakeQmp):
    """A guest that releases the disk only after the first wait gave up (QEMU then says the device is gone)."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = 0
        self.deleted = False

    def execute(self, command: str, **arguments: object) -> None:
        if command == "device_del" and self.deleted:
            raise RuntimeError(f"QMP device_del: Device '{arguments['id']}' not found")
        super().execute(command, **arguments)

    def wait_event(self, name: str, device_id: str, timeout: float) -> bool:
        self.waited += 1
        self.deleted = True  # released, but after the wait
        return False


def test_an_unplug_the_guest_was_slow_to_release_completes_when_asked_again(tmp_path):
    vmtest = load_vmtest()
    qmp = SlowQmp()
    bridge = vmtest.Bridge(tmp_path, {"a": qmp})
    assert bridge.handle({"op": "plug", "volume": "vol-0a", "size_gib": 1}) == {"ok": True}
    first = bridge.handle({"op": "unplug", "volume": "vol-0a"})
    assert not first["ok"] and "did not release d-vol-0a within 120 s" in first["error"]
    assert bridge.handle({"op": "unplug", "volume": "vol-0a"}) == {"ok": True}  # gone now: blockdev-del, done
    assert [c for c, _ in qmp.calls][-1] == "blockdev-del" and "vol-0a" not in bridge.plugged


def test_a_snapshot_copies_the_disk_at_the_call_and_a_volume_made_from_it_gets_the_copy(tmp_path):
    vmtest = load_vmtest()
    bridge = vmtest.Bridge(tmp_path, {"a": FakeQmp()})
    disk = tmp_path / "vol-0a.img"
    with open(disk, "wb") as fh:
        fh.truncate(1 << 30)
        fh.seek(5 << 20)
        fh.write(b"at the call")
    assert bridge.handle({"op": "snapshot", "volume": "vol-0a", "snapshot": "snap-01"})["ok"]
    with open(disk, "r+b") as fh:  # written after the call: not in the snapshot
        fh.seek(5 << 20)
        fh.write(b"afterwards!")
    assert bridge.handle({"op": "restore", "volume": "vol-0b", "snapshot": "snap-01"})["ok"]
    made = (tmp_path / "vol-0b.img").read_bytes()
    assert len(made) == 1 << 30 and made[5 << 20:(5 << 20) + 11] == b"at the call"
    assert os.stat(tmp_path / "snap-01.img").st_blocks * 512 < 1 << 20  # sparse
    assert bridge.handle({"op": "plug", "volume": "vol-0b", "size_gib": 1}) == {"ok": True}
    assert not bridge.handle({"op": "restore", "volume": "vol-0b", "snapshot": "snap-01"})["ok"]  # plugged
    assert bridge.handle({"op": "delete-snapshot", "volume": "vol-0", "snapshot": "snap-01"}) == {"ok": True}
    assert not (tmp_path / "snap-01.img").exists()
    assert bridge.handle({"op": "snapshot", "volume": "vol-0c", "snapshot": "snap-02"})["empty"]  # never plugged
    assert not bridge.handle({"op": "snapshot", "volume": "vol-0a", "snapshot": "../x"})["ok"]
