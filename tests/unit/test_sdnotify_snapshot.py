"""systemd notifications over a real datagram socket; the shared cloud listing's call budget."""

from __future__ import annotations

import socket
from pathlib import Path

from bsud.cloud.base import CloudProvider, Identity, Volume
from bsud.naming import DRIVE_TAG
from bsud.reconcile.observe import CloudSnapshot, unmanaged_drives
from bsud.sdnotify import notify, watchdog_interval


def test_notify_sends_datagrams(tmp_path: Path, monkeypatch):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1", "STATUS=data: online")
        assert server.recv(4096).decode() == "READY=1\nSTATUS=data: online"


def test_notify_without_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_watchdog_interval_is_half_the_period(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 10.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


class CountingCloud(CloudProvider):
    """A fake cloud that only counts list calls (the snapshot never calls anything else)."""

    def __init__(self, volumes: list[Volume]) -> None:
        super().__init__()
        self.volumes = volumes
        self.lists = 0

    def identity(self) -> Identity:
        return Identity("i-me", "z-1a", "z-1")

    def list_volumes(self) -> list[Volume]:
        self.lists += 1
        return list(self.volumes)

    def get_volume(self, volume_id):  # pragma: no cover - not used
        raise NotImplementedError

    create_volume = attach_volume = detach_volume = delete_volume = set_tag = get_volume


def vol(vid: str, drive: str, attached: bool) -> Volume:
    from bsud.cloud.base import Attachment

    return Volume(id=vid, size_gib=1, state="in-use" if attached else "available", volume_type="gp2", zone="z-1a",
                  tags={DRIVE_TAG: drive}, attachments=(Attachment("i-me", "/dev/xvdb", "attached"),) if attached else ())


def test_one_listing_serves_every_drive_until_stale_or_invalidated():
    cloud = CountingCloud([vol("v1", "a", True), vol("v2", "b", True), vol("v3", "c", False)])
    snapshot = CloudSnapshot(cloud, max_age=60)
    for _ in range(5):
        grouped = snapshot.by_drive()
    assert cloud.lists == 1 and sorted(grouped) == ["a", "b", "c"]
    snapshot.invalidate()
    snapshot.by_drive()
    assert cloud.lists == 2
    snapshot.by_drive(max_age=0)
    assert cloud.lists == 3


def test_what_was_listed_is_there_without_waiting_for_a_cloud_that_does_not_answer():
    """The daemon's main loop (status, watchdog, signals) reads the last listing while a drive's listing hangs."""
    import threading

    cloud = CountingCloud([vol("v1", "a", True)])
    snapshot = CloudSnapshot(cloud, max_age=60)
    assert snapshot.cached() is None
    snapshot.by_drive()
    answer = threading.Event()
    hanging = CountingCloud.list_volumes

    def slow(self):
        answer.wait(10)
        return hanging(self)

    cloud.list_volumes = slow.__get__(cloud)  # type: ignore[method-assign]
    reader = threading.Thread(target=snapshot.by_drive, kwargs={"max_age": 0})
    reader.start()
    try:
        assert sorted(snapshot.cached() or {}) == ["a"]  # while the listing hangs
        cloud.volumes.append(vol("v2", "b", True))
        snapshot.invalidate()  # a change made meanwhile: never waits either
        assert snapshot.cached() is None
    finally:
        answer.set()
        reader.join(10)
    # The answer that started before the change is not kept as fresh: the next reader lists again.
    assert sorted(snapshot.by_drive()) == ["a", "b"] and cloud.lists == 3


def test_unmanaged_drives_are_the_attached_ones_not_configured():
    grouped = CloudSnapshot(CountingCloud([vol("v1", "a", True), vol("v2", "b", True), vol("v3", "c", False)])).by_drive()
    assert unmanaged_drives(grouped, {"a"}, "i-me") == {"b": ["v2"]}


def test_a_listing_is_kept_for_its_age_with_a_jitter_so_a_fleet_does_not_list_in_step(monkeypatch):
    import bsud.reconcile.observe as observe

    cloud = CountingCloud([vol("v1", "a", True)])
    now = [1000.0]
    monkeypatch.setattr(observe.time, "monotonic", lambda: now[0])
    factors = iter([1.2, 0.8, 1.0, 1.1])
    monkeypatch.setattr(observe.random, "uniform", lambda low, high: (low, high) == (0.8, 1.2) and next(factors))
    snapshot = CloudSnapshot(cloud, max_age=1200, jitter=0.2)
    snapshot.by_drive()  # listed; kept 1440 s
    now[0] += 1439
    snapshot.by_drive()
    assert cloud.lists == 1
    now[0] += 2
    snapshot.by_drive()  # listed again; kept 960 s
    now[0] += 961
    snapshot.by_drive()
    assert cloud.lists == 3
    snapshot.by_drive(max_age=5)  # a drive missing a member asks for a recent one: plain age, no jitter
    assert cloud.lists == 3
    now[0] += 6
    snapshot.by_drive(max_age=5)
    assert cloud.lists == 4
