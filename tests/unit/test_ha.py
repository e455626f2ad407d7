"""The drbd-reactor promoter file for a highly available drive: its TOML read back, the start list in the
linstor-gateway order, and every line checked against the real agents' meta-data (resource-agents)."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path

import pytest

from bsud.config import InvalidConfig, parse_config
from bsud.exports.files import ExportError
from bsud.ha.agent import OCF_ROOT, Agent
from bsud.ha.gateway import render, start_list
from bsud.ha.ocf import check_agents
from bsud.ha.promoter import NFSDCLD_DROPIN_TEXT, Promoter, needs_nfsdcld_dropin
from bsud.runner import Runner

HA = {"drbd-resource": "data", "drbd-device": "/dev/drbd1000", "peer-drive": "data-b", "service-ip": "10.0.0.50/24", "nic": "eth1",
      "cluster-private-device": "/dev/drbd1001", "cluster-private-mount": "/srv/ha/data-private"}
EXPORTS = [
    {"kind": "nfs", "clients": ["10.0.0.0/24", "app.example"], "options": ["rw", "sync", "no_root_squash"]},
    {"kind": "iscsi", "iqn": "iqn.2026-11.com.example:data", "path": "luns", "lun-size-gib": 4,
     "initiators": ["iqn.2026-11.com.example:app"], "chap": {"user": "u", "password": "chap secret 12"}},
    {"kind": "nvmeof", "nqn": "nqn.2026-11.com.example:data", "path": "ns", "size-gib": 4,
     "hosts": ["nqn.2026-11.com.example:host"], "address": "10.0.0.50", "port": 4420},
]
needs_agents = pytest.mark.skipif(not (OCF_ROOT / "resource.d" / "heartbeat" / "IPaddr2").exists(),
                                  reason="the OCF agents are not installed (package resource-agents)")


def drive(ha=HA, exports=EXPORTS, layout="lvm"):
    text = json.dumps({"cloud": {"provider": "local"}, "drives": [
        {"name": "data", "target": "online", "mount-path": "/srv/data", "layout": layout, "exports": exports,
         "ha": ha}]})
    return parse_config(text, path="bsud.json").drives[0]


def test_the_drives_mount_options_go_to_the_filesystem_agent_that_mounts_it():
    text = json.dumps({"cloud": {"provider": "local"}, "drives": [
        {"name": "data", "target": "online", "mount-path": "/srv/data", "layout": "lvm", "exports": EXPORTS,
         "ha": HA, "mount-options": "compress=zstd:3,noatime"}]})
    d = parse_config(text, path="bsud.json").drives[0]
    agents = start_list(d.name, d.mount_path, d.ha, d.exports, d.mount_options)
    assert dict(agents[2].params) == {"device": "/dev/drbd1000", "directory": "/srv/data", "fstype": "btrfs",
                                      "run_fsck": "no", "options": "compress=zstd:3,noatime"}
    assert "options=compress=zstd:3,noatime" in render(d.name, d.mount_path, d.ha, d.exports, d.mount_options)


def test_the_start_list_is_in_the_gateway_order_and_reads_back_as_drbd_reactor_splits_it():
    d = drive()
    agents = start_list(d.name, d.mount_path, d.ha, d.exports)
    assert [a.agent for a in agents] == [
        "portblock", "Filesystem", "Filesystem", "IPaddr2", "nfsserver", "exportfs", "exportfs", "iSCSITarget",
        "iSCSILogicalUnit", "nvmet-subsystem", "symlink", "nvmet-namespace", "nvmet-port", "portblock"]
    # the subsystem agent's stop cannot remove a subsystem with an allowed host linked in it: the symlink entry's
    # stop (just before, in reverse order) removes that link
    assert dict(agents[10].params) == {
        "link": "/sys/kernel/config/nvmet/subsystems/nqn.2026-11.com.example:data/allowed_hosts/"
                "nqn.2026-11.com.example:host",
        "target": "/sys/kernel/config/nvmet/hosts/nqn.2026-11.com.example:host"}
    assert dict(agents[0].params)["action"] == "block" and dict(agents[-1].params)["action"] == "unblock"
    assert dict(agents[0].params)["portno"] == "2049,3260,4420"
    assert Agent.parse("var-lib-nfs-rpc_pipefs.mount").is_unit  # a plain unit, as drbd-reactor takes one
    assert dict(agents[2].params) == {"device": "/dev/drbd1000", "directory": "/srv/data", "fstype": "btrfs",
                                      "run_fsck": "no"}
    assert dict(agents[3].params) == {"ip": "10.0.0.50", "cidr_netmask": "24", "nic": "eth1"}
    assert dict(agents[8].params)["path"] == "/srv/data/luns/iscsi-iqn.2026-11.com.example:data.img"
    for agent in agents:  # a value with spaces survives drbd-reactor's shell-like split
        assert Agent.parse(agent.line()) == agent
    assert dict(agents[7].params)["incoming_password"] == "chap secret 12"
    env = agents[3].env("data")
    assert env["OCF_RESOURCE_INSTANCE"] == "service_ip0_data" and env["OCF_RESKEY_ip"] == "10.0.0.50"


def test_the_file_is_a_promoter_section_with_metadata():
    d = drive()
    data = tomllib.loads(render(d.name, d.mount_path, d.ha, d.exports))
    (promoter,) = data["promoter"]
    assert promoter["metadata"] == {"bsud-drive": "data", "bsud-schema-version": 1}
    resource = promoter["resources"]["data"]
    assert (resource["runner"], resource["target-as"], resource["stop-services-on-exit"],
            resource["on-drbd-demote-failure"]) == ("systemd", "Requires", True, "reboot-immediate")
    assert [Agent.parse(line) for line in resource["start"]] == start_list(d.name, d.mount_path, d.ha, d.exports)


@needs_agents
def test_every_line_bsud_writes_matches_its_agents_meta_data():
    d = drive()
    assert check_agents(start_list(d.name, d.mount_path, d.ha, d.exports)) == []
    typo = Agent("heartbeat", "IPaddr2", "ip", (("ip", "10.0.0.50"), ("cidr_mask", "24")))
    bare = Agent("heartbeat", "Filesystem", "fs", (("device", "/dev/drbd1000"),))
    assert check_agents([typo, bare]) == ["IPaddr2 ip: IPaddr2 has no parameter cidr_mask",
                                          "Filesystem fs: required parameter directory, fstype missing"]
    with pytest.raises(ExportError, match="package resource-agents"):
        check_agents([Agent("heartbeat", "NoSuchAgent", "x", ())])


@needs_agents
def test_without_portblock_the_list_has_no_portblock_entries():
    d = drive(ha={**HA, "portblock": False})
    agents = start_list(d.name, d.mount_path, d.ha, d.exports)
    assert [a.agent for a in agents][:3] == ["Filesystem", "Filesystem", "IPaddr2"]
    assert agents[-1].agent == "nvmet-port"


@needs_agents
def promoter(tmp_path: Path, units: tuple[Path, ...] = ()) -> Promoter:
    """A promoter that looks for unit files in ``units`` and writes its drop-in under tmp_path, not in /etc."""
    return Promoter(Runner(), unit_dirs=units, nfsdcld_dropin=tmp_path / "units" / "nfsdcld.service.d" / "x.conf")


def test_a_portblock_agent_that_cannot_see_its_rules_stops_the_write(tmp_path: Path, monkeypatch):
    import bsud.ha.ocf as ha

    d = drive(ha={**HA, "promoter-dir": str(tmp_path / "reactor")})
    monkeypatch.setattr(ha, "portblock_problem", lambda *a: "the portblock agent here does not find the rules")
    with pytest.raises(ExportError, match="portblock: the portblock agent here does not find the rules"):
        promoter(tmp_path).write(d.name, d.mount_path, d.ha, d.exports)
    assert not (tmp_path / "reactor").exists() or list((tmp_path / "reactor").iterdir()) == []
    monkeypatch.setattr(ha, "portblock_problem", lambda *a: None)
    assert promoter(tmp_path).write(d.name, d.mount_path, d.ha, d.exports)


def test_with_nfs_the_host_gets_nfsdcld_stopping_with_nfs_server(tmp_path: Path):
    """Found by running the agents (tests/vm/test_ha_gateway.py): nfsdcld, which nfs-server.service pulls in, keeps
    /var/lib/nfs busy after nfs-server stops, and the nfsserver agent's stop then fails to unmount it."""
    units = tmp_path / "lib"
    units.mkdir()
    d = drive(ha={**HA, "promoter-dir": str(tmp_path / "reactor"), "portblock": False})
    agents = start_list(d.name, d.mount_path, d.ha, d.exports)
    assert not needs_nfsdcld_dropin(agents, (units,))  # no nfsdcld on this host: nothing to do
    (units / "nfsdcld.service").write_text("[Service]\nExecStart=/usr/sbin/nfsdcld\n")
    assert needs_nfsdcld_dropin(agents, (units,))
    assert not needs_nfsdcld_dropin([a for a in agents if a.agent not in ("nfsserver", "exportfs")], (units,))
    p = promoter(tmp_path, (units,))
    assert p.unprepared(agents) == [p.nfsdcld_dropin]  # what `bsud ha-config` names before --write
    assert p.write(d.name, d.mount_path, d.ha, d.exports)
    assert p.unprepared(agents) == []
    assert p.nfsdcld_dropin.read_text() == NFSDCLD_DROPIN_TEXT and "PartOf=nfs-server.service" in NFSDCLD_DROPIN_TEXT
    assert not p.write(d.name, d.mount_path, d.ha, d.exports)  # idempotent
    p.nfsdcld_dropin.write_text("[Unit]\n")  # changed by hand: put back
    assert p.write(d.name, d.mount_path, d.ha, d.exports) and p.nfsdcld_dropin.read_text() == NFSDCLD_DROPIN_TEXT


def test_the_file_is_written_private_and_a_line_an_agent_refuses_changes_nothing(tmp_path: Path, monkeypatch):
    d = drive(ha={**HA, "promoter-dir": str(tmp_path), "portblock": False})
    promoter = Promoter(Runner(), unit_dirs=())
    assert promoter.write(d.name, d.mount_path, d.ha, d.exports)
    path = tmp_path / "bsud-data.toml"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # the CHAP password is in it
    assert not promoter.write(d.name, d.mount_path, d.ha, d.exports)
    good = path.read_text()
    import bsud.ha.gateway as ha

    real = ha.start_list
    monkeypatch.setattr(ha, "start_list", lambda *a: [*real(*a), Agent("heartbeat", "IPaddr2", "x", (("ipp", "1"),))])
    with pytest.raises(ExportError, match="IPaddr2 has no parameter ipp, required parameter ip missing|"
                                          "IPaddr2 has no parameter ipp"):
        promoter.write(d.name, "/srv/other", d.ha, d.exports)
    assert path.read_text() == good and sorted(p.name for p in tmp_path.iterdir()) == ["bsud-data.toml"]


@pytest.mark.parametrize(("ha", "exports", "layout", "expected"), [
    ({**HA, "service-ip": "10.0.0.50"}, EXPORTS, "lvm", "field 'ha.service-ip': '10.0.0.50' is not a host address"),
    ({**HA, "drbd-resource": "bad name"}, EXPORTS, "lvm", "field 'ha.drbd-resource': 'bad name' is not a DRBD resource"),
    (HA, EXPORTS, "btrfs", "field 'ha': a highly available drive needs the lvm layout"),
    (HA, [{"kind": "smb", "share": "s"}], "lvm", "field 'ha': smb exports have no OCF agent"),
    ({k: v for k, v in HA.items() if not k.startswith("cluster")}, EXPORTS[:1], "lvm",
     "field 'ha.cluster-private-device': NFS needs cluster-private-device"),
    ({k: v for k, v in HA.items() if k != "peer-drive"}, EXPORTS, "lvm",
     "field 'ha.peer-drive': required: the name of the other DRBD node's bsud drive"),
    ({**HA, "peer-drive": "data"}, EXPORTS, "lvm", "field 'ha.peer-drive': 'data' is this drive"),
    ({**HA, "peer-drive": "no/slash"}, EXPORTS, "lvm", "field 'ha.peer-drive': 'no/slash' is not a drive name"),
    ({**HA, "peer-instance": "vm-1"}, EXPORTS, "lvm", "field 'ha.peer-instance': 'vm-1' is not an instance id"),
    ({**HA, "mount-path": "/srv/elsewhere"}, EXPORTS, "lvm",
     "field 'ha.mount-path': '/srv/elsewhere' differs from the drive's mount-path '/srv/data'"),
])
def test_a_bad_ha_section_is_one_line(ha, exports, layout, expected):
    with pytest.raises(InvalidConfig) as info:
        drive(ha, exports, layout)
    lines = [str(p) for p in info.value.problems]
    assert any(expected in line and "drive 'data'" in line for line in lines), lines


def test_the_daemon_refuses_a_highly_available_drive_on_the_local_provider_and_ha_config_prints_its_file_masked(tmp_path: Path, capsys):
    from bsud.cli import main

    config = tmp_path / "bsud.json"
    config.write_text(json.dumps({"cloud": {"provider": "local", "state-dir": str(tmp_path / "state")},
                                  "daemon": {"status-file": str(tmp_path / "status.json")},
                                  "drives": [{"name": "data", "target": "online", "mount-path": "/srv/data",
                                              "exports": EXPORTS, "ha": {**HA, "portblock": False}}]}))
    assert main(["-c", str(config), "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drive 'data'" in err[0] and "needs a cloud provider" in err[0], err
    if (OCF_ROOT / "resource.d" / "heartbeat" / "IPaddr2").exists():
        assert main(["-c", str(config), "ha-config"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("# /etc/drbd-reactor.d/bsud-data.toml\n") and "chap secret 12" not in out
        assert "incoming_password='********'" in out and "ocf:heartbeat:IPaddr2 service_ip0" in out


def test_a_kind_registered_without_ha_agents_is_refused_in_an_ha_drive_by_its_name(monkeypatch):
    """The registry refuses any kind that declares no HA agents (not a list of known kinds): a new kind cannot pass
    the config's check and then be left out of the gateway."""
    from typing import Literal

    import bsud.exports as registry
    from bsud.config.ha import check_ha
    from bsud.exports.base import ExportPlugin
    from bsud.exports.model import ExportModel
    from bsud.exports.smb import Samba

    class ScratchExport(ExportModel):
        kind: Literal["scratch"]

    plugin = ExportPlugin(name="scratch", exporter=Samba, model=ScratchExport, describe=lambda e: "scratch:x")
    monkeypatch.setitem(registry.KINDS, "scratch", plugin)
    d = drive()
    scratch = ScratchExport(kind="scratch")
    problems = check_ha(d.ha, (*d.exports, scratch), "lvm")
    assert problems == [("", "scratch exports have no OCF agent in the gateway; remove them or the ha section")]
    assert check_ha(d.ha, d.exports, "lvm") == []  # the kinds that have agents pass


def test_ha_config_without_a_drbd_device_asks_drbdadm_and_says_in_one_line_when_it_cannot_tell(tmp_path: Path,
                                                                                                   capsys):
    from bsud.cli import main

    config = tmp_path / "bsud.json"
    ha = {k: v for k, v in HA.items() if k != "drbd-device"}
    config.write_text(json.dumps({"cloud": {"provider": "local", "state-dir": str(tmp_path / "state")},
                                  "drives": [{"name": "data", "target": "online", "mount-path": "/srv/data",
                                              "exports": EXPORTS, "ha": {**ha, "drbd-resource": "bsud-test-none",
                                                                         "portblock": False}}]}))
    assert main(["-c", str(config), "ha-config"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drive 'data': field 'ha.drbd-device': not given, and " in err[0], err
