"""What the host tells: a block device event concerning a drive wakes it with a fresh cloud listing, at once; one
concerning no drive costs nothing (bsud.drives.Drives.block_event)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from bsud.drives import Drives


class Worker:
    def __init__(self, obs) -> None:
        self.reconciler = SimpleNamespace(last_obs=obs)
        self.poked = threading.Event()

    def poke(self) -> None:
        self.poked.set()


class Snapshot:
    def __init__(self) -> None:
        self.invalidated = 0

    def invalidate(self) -> None:
        self.invalidated += 1


def volume(device: str | None, attached_here: bool = True):
    return SimpleNamespace(device=device, attached_here=attached_here)


def daemon(**workers: Worker) -> SimpleNamespace:
    return SimpleNamespace(workers=workers, snapshot=Snapshot())


def observed(*volumes: SimpleNamespace, missing: str | None = None, replication: object = None) -> SimpleNamespace:
    """A drive's last observation, as much of it as the daemon reads: its volumes, what its storage misses, its DRBD
    resource (a highly available drive)."""
    return SimpleNamespace(volumes=list(volumes), storage=SimpleNamespace(missing=missing, replication=replication))


def test_a_member_device_that_goes_wakes_its_drive_with_a_fresh_listing():
    data = Worker(observed(volume("/dev/sdb"), volume("/dev/sdc")))
    logs = Worker(observed(volume("/dev/sdd")))
    host = daemon(data=data, logs=logs)
    Drives.block_event(host, "remove", "/dev/sdc")  # type: ignore[arg-type]
    assert data.poked.is_set() and not logs.poked.is_set() and host.snapshot.invalidated == 1


def test_a_device_that_comes_wakes_the_drives_that_miss_one():
    missing = Worker(observed(volume("/dev/sdb"), volume(None)))
    whole = Worker(observed(volume("/dev/sdd")))
    lost_pv = Worker(observed(volume("/dev/sde"), missing="VG x misses 1 of its 2 PVs"))
    host = daemon(missing=missing, whole=whole, lost_pv=lost_pv)
    Drives.block_event(host, "add", "/dev/sdf")  # type: ignore[arg-type]
    assert missing.poked.is_set() and lost_pv.poked.is_set() and not whole.poked.is_set()
    assert host.snapshot.invalidated == 1


def test_a_device_that_comes_wakes_a_highly_available_drive_whose_primary_may_have_attached_it():
    from bsud.storage import Replication

    secondary = Worker(observed(volume("/dev/sdb"), replication=Replication("data", up=True, role="Secondary")))
    plain = Worker(observed(volume("/dev/sdd")))
    host = daemon(secondary=secondary, plain=plain)
    Drives.block_event(host, "add", "/dev/sdf")  # type: ignore[arg-type]
    assert secondary.poked.is_set() and not plain.poked.is_set() and host.snapshot.invalidated == 1
    Drives.block_event(host, "change", "/dev/sdg")  # type: ignore[arg-type]
    assert host.snapshot.invalidated == 1


def test_an_event_concerning_no_drive_costs_no_listing():
    data = Worker(observed(volume("/dev/sdb")))
    starting = Worker(None)
    host = daemon(data=data, starting=starting)
    for action, device in (("change", "/dev/dm-3"), ("add", "/dev/sdz"), ("remove", "/dev/loop7")):
        Drives.block_event(host, action, device)  # type: ignore[arg-type]
    assert not data.poked.is_set() and host.snapshot.invalidated == 0


def test_readiness_counts_a_highly_available_drive_once_its_lv_is_active_mounted_or_not():
    """systemd's READY=1 waits for every online drive mounted — a highly available one is mounted by the gateway on
    the Primary only: its LV active (DRBD's disk ready) is enough (bsud.drives.Drives.not_mounted)."""
    from bsud.config import Target
    from bsud.storage import Replication

    def drive(mounted: bool, active: bool, replicated: bool) -> Worker:
        obs = SimpleNamespace(mounted=mounted, storage=SimpleNamespace(
            active=active, replication=Replication("r0", up=True, role="Secondary") if replicated else None))
        worker = Worker(obs)
        worker.reconciler.spec = SimpleNamespace(target=Target.ONLINE)
        return worker
    host = SimpleNamespace(workers={"plain": drive(False, True, False), "mounted": drive(True, True, False),
                                    "secondary": drive(False, True, True), "building": drive(False, False, True)})
    assert Drives.not_mounted(host) == ["plain", "building"]  # type: ignore[arg-type]
