"""nfs-ganesha exports: the EXPORT blocks bsud writes, the ids it derives, the D-Bus replies it reads, what the
config accepts for a ganesha export."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bsud.config import InvalidConfig, parse_config
from bsud.exports import make_exporters
from bsud.exports.files import ExportError
from bsud.exports.ganesha import Ganesha, GaneshaSettings
from bsud.exports.ganesha_config import FIRST_ID, LAST_ID, export_block, export_id, ids_in, render
from bsud.exports.ganesha_dbus import IoStats, NotRunning, parse_io, parse_show_exports
from bsud.exports.ganesha_server import GaneshaServer
from bsud.exports.nfs import NfsExport
from bsud.runner import Runner


def nfs(**kw) -> NfsExport:
    return NfsExport.model_validate({"kind": "nfs", "server": "ganesha", "clients": ["10.0.0.0/24"], **kw})


def config(export: dict) -> str:
    return json.dumps({"cloud": {"provider": "local"}, "drives": [
        {"name": "data", "target": "online", "mount-path": "/srv/data", "exports": [export]}]})


def test_each_export_is_one_block_with_a_stable_id_its_pseudo_path_and_its_clients():
    block = export_block("data", "/srv/data", nfs(path="projects", clients=["10.0.0.0/24", "host.example"],
                                                   options=["ro", "no_root_squash", "anonuid=65534", "sec=sys:krb5"]))
    ident = export_id("data", "projects")
    assert f"Export_Id = {ident};" in block
    assert 'Path = "/srv/data/projects";' in block and 'Pseudo = "/bsud/data/projects";' in block
    assert "Clients = 10.0.0.0/24, host.example;" in block and "Access_Type = RO;" in block
    assert "Squash = no_root_squash;" in block and "Anonymous_Uid = 65534;" in block
    assert "SecType = sys, krb5;" in block and "Name = VFS;" in block
    assert "Access_Type = None;" in block  # nobody but the listed clients
    whole = export_block("data", "/srv/data", nfs())
    assert 'Pseudo = "/bsud/data";' in whole and "Access_Type = RW;" in whole and "Squash = root_squash;" in whole


def test_ids_are_stable_spread_and_read_back_from_the_file():
    assert export_id("data", "a") == export_id("data", "/a/") != export_id("other", "a")
    ids = {export_id(f"drive{i}", "") for i in range(200)}
    assert all(FIRST_ID <= i <= LAST_ID for i in ids) and len(ids) > 195
    text = render("data", "/srv/data", [nfs(), nfs(path="sub")])
    assert text is not None and text.startswith("# Written by bsud for drive 'data'")
    assert ids_in(text) == {export_id("data", ""): "/srv/data", export_id("data", "sub"): "/srv/data/sub"}
    assert render("data", "/srv/data", []) is None and ids_in(None) == {}


def test_dbus_replies_are_read_as_ganesha_sends_them():
    # ShowExports: (timestamp, [(id, path, nfsv3, mnt, nlm4, rquota, nfsv40, nfsv41, nfsv42, 9p, last_io), …])
    reply = ((1764150000, 12), [(0, "/", False, False, False, False, True, True, True, False, (0, 0)),
                                (4242, "/srv/data", True, True, True, False, True, True, True, False, (1, 2))])
    assert parse_show_exports(reply) == {0: "/", 4242: "/srv/data"}
    # GetNFSv40IO: (ok, error, timestamp, read, write), each (requested, transferred, ops, errors, latency, 0)
    io = parse_io((True, "OK", (1, 2), (4096, 4000, 3, 0, 900, 0), (8192, 8192, 2, 1, 100, 0)))
    assert io == IoStats(read_bytes=4000, write_bytes=8192, requests=5, errors=1, latency_ns=1000)
    assert parse_io((False, "NFSv4.0 stats disabled", (1, 2))) == IoStats()
    assert io + io == IoStats(8000, 16384, 10, 2, 2000)


def test_a_drive_without_ganesha_exports_never_asks_dbus(tmp_path: Path):
    kind = Ganesha(Runner(), GaneshaSettings(exports_dir=str(tmp_path)), bus="unix:path=/nonexistent/bus")
    state = kind.observe("data", "/srv/data", [])
    assert state.applied and not state.present and state.server == ""
    assert kind.withdraw("data") is False


def test_the_server_is_chosen_per_export_and_settings_reach_the_kind(tmp_path: Path):
    loaded = parse_config(config({"kind": "nfs", "server": "ganesha", "clients": ["*"]}))
    assert loaded.drives[0].exports[0].exporter == "nfs-ganesha"
    assert loaded.effective()["nfs"]["ganesha"] == {
        "exports-dir": "/etc/ganesha/bsud.d", "heartbeat-timeout-seconds": 10.0, "managed": False,
        "config-file": "/etc/ganesha/ganesha.conf", "log-file": "/var/log/ganesha/ganesha.log",
        "pid-file": "/run/ganesha/ganesha.pid", "restart-backoff-max-seconds": 60.0}
    assert parse_config(config({"kind": "nfs", "clients": ["*"]})).drives[0].exports[0].exporter == "nfs"
    kinds = make_exporters(Runner(), loaded.nfs.model_copy(update={"ganesha": GaneshaSettings(exports_dir="/x")}))
    assert kinds["nfs-ganesha"].file("data") == Path("/x/data.conf")


@pytest.mark.parametrize("option", ["nohide", "crossmnt", "wdelay"])
def test_an_option_ganesha_has_no_word_for_is_refused_at_load(option: str):
    with pytest.raises(InvalidConfig) as info:
        parse_config(config({"kind": "nfs", "server": "ganesha", "clients": ["*"], "options": ["rw", option]}))
    (line,) = [str(p) for p in info.value.problems]
    assert f"'{option}' has no nfs-ganesha equivalent bsud knows" in line and "drive 'data'" in line, line
    parse_config(config({"kind": "nfs", "clients": ["*"], "options": ["rw", option]}))  # the kernel server has it


class StoppedGanesha:
    """A bus on which ganesha is not running (every call answers ServiceUnknown, as dbus-daemon does)."""

    def __getattr__(self, name):
        def call(*args):
            raise NotRunning("nfs-ganesha is not on the system D-Bus (not running? start nfs-ganesha)")
        return call


def test_withdrawing_while_ganesha_is_not_running_removes_the_file_and_nothing_else(tmp_path: Path):
    kind = Ganesha(Runner(), GaneshaSettings(exports_dir=str(tmp_path)))
    kind.bus = StoppedGanesha()  # type: ignore[assignment]
    kind.file("data").write_text(render("data", "/srv/data", [nfs()]) or "")
    assert kind.withdraw("data") is True and not kind.file("data").exists()
    with pytest.raises(ExportError, match="not on the system D-Bus"):  # applying needs it, though
        kind.apply("data", "/", [nfs()])


def test_the_daemon_runs_one_managed_ganesha_and_its_state_is_in_the_readiness_line(monkeypatch, tmp_path: Path):
    from bsud.exports.ganesha_process import ManagedGanesha

    missing = "rpcbind is not running (ganesha registers NFS and MOUNT there); start it (package rpcbind)"
    monkeypatch.setattr(ManagedGanesha, "_prerequisites", staticmethod(lambda: missing))
    settings = GaneshaSettings(managed=True, exports_dir=str(tmp_path))
    server = GaneshaServer()  # the daemon's: one per daemon, handed to every drive's ganesha kind
    first = server.start_managed(settings)
    try:
        assert server.start_managed(settings) is first and server.managed is first
        deadline = time.monotonic() + 10
        while not first.state.startswith("waiting:") and time.monotonic() < deadline:
            time.sleep(0.05)
        ready, text = Ganesha(Runner(), settings, server=server).readiness()
        assert not ready and f"managed: waiting: {missing}" in text, text
        kinds = make_exporters(Runner(), None, server)
        assert kinds["nfs-ganesha"].server is server and server.status() == first.status()
    finally:
        server.stop_managed()
    assert server.managed is None and first.state == "stopped" and server.status() is None
