"""The daemon's report sinks with real files and a real datagram socket: the status file and sd_notify's STATUS=."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from bsud.reconcile.model import DriveObs, Idle, Plan, VolumeObs
from bsud.reconcile.report import DriveStatus
from bsud.sinks import DaemonReport, SdNotifyStatus, StatusFile


def report() -> DaemonReport:
    st = DriveStatus("data", "online", "lvm", "/mnt/data")
    obs = DriveObs(name="data", volumes=(VolumeObs(id="vol-1", size_gib=10, state="in-use", member=True),))
    st.record(obs, Plan(Idle(reason="online"), "online"))
    return DaemonReport(version="1.0", pid=42, config="/etc/osc/bsud.json", started=1.0, updated=2.0,
                        drives={"data": st}, unmanaged={"old": ["vol-9"]})


def test_status_file_holds_every_drive_and_nothing_half_written(tmp_path: Path):
    path = tmp_path / "run" / "status.json"
    StatusFile(lambda: str(path)).publish(report())
    data = json.loads(path.read_text())
    assert data["pid"] == 42 and data["unmanaged"] == {"old": ["vol-9"]}
    drive = data["drives"]["data"]
    assert (drive["phase"], drive["action"], drive["size_gib"]) == ("online", "Idle", 10)
    assert drive["volumes"] == [{"id": "vol-1", "size_gib": 10, "state": "in-use", "device": None, "member": True}]
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]


def test_status_file_that_cannot_be_written_is_logged_not_raised(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    StatusFile(lambda: str(blocker / "status.json")).publish(report())  # a file where a directory must be


def test_sd_notify_status_names_each_drive(tmp_path: Path, monkeypatch):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        SdNotifyStatus().publish(report())
        assert server.recv(4096).decode() == "STATUS=data: online (1 volumes, 10 GiB, used -)"
