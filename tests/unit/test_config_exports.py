"""A drive's exports in the config: each kind's schema and rules, clashes between exports, secrets masked."""

from __future__ import annotations

import json

import pytest

from bsud.config import CloudSettings, DaemonSettings, InvalidConfig, parse_config
from bsud.exports import EXPORT_KINDS

NFS = {"kind": "nfs", "path": "projects", "clients": ["10.0.0.0/24", "client.example"]}
SMB = {"kind": "smb", "share": "data", "valid-users": ["alice", "@staff"]}
ISCSI = {"kind": "iscsi", "iqn": "iqn.2026-11.com.example:data", "lun-size-gib": 4,
         "initiators": ["iqn.1993-08.org.debian:01:abcdef"], "chap": {"user": "bsud", "password": "s3cret-passwd"}}
NVME = {"kind": "nvmeof", "nqn": "nqn.2026-11.com.example:data", "size-gib": 4,
        "hosts": ["nqn.2014-08.org.nvmexpress:uuid:0f7d1c2e-5d3a-4c3b-9f1e-2b6a7c8d9e0f"], "address": "10.0.0.5"}


def config(*exports: dict, name: str = "data", extra: list | None = None) -> str:
    drive = {"name": name, "target": "online", "mount-path": f"/mnt/{name}", "exports": list(exports)}
    return json.dumps({"drives": [drive, *(extra or [])]})


def problems(text: str) -> list[str]:
    with pytest.raises(InvalidConfig) as info:
        parse_config(text, path="bsud.json")
    return [str(p) for p in info.value.problems]


def test_every_kind_has_its_defaults():
    nfs, smb, iscsi, nvme = (EXPORT_KINDS[e["kind"]].model_validate_json(json.dumps(e), strict=True)
                             for e in (NFS, SMB, ISCSI, NVME))
    assert nfs.options == ("rw", "sync", "root_squash", "no_subtree_check") and nfs.path == "projects"
    assert smb.read_only is False and smb.valid_users == ("alice", "@staff")
    assert iscsi.lun_size_gib == 4 and iscsi.chap.password.get_secret_value() == "s3cret-passwd"
    assert (nvme.transport, nvme.port) == ("tcp", 4420)


def test_every_kind_loads():
    assert parse_config(config(NFS)).drives[0].exports[0].clients == ("10.0.0.0/24", "client.example")
    assert parse_config(config(SMB)).drives[0].exports[0].share == "data"
    assert parse_config(config(ISCSI)).drives[0].exports[0].lun_size_gib == 4
    assert parse_config(config(NVME)).drives[0].exports[0].size_gib == 4


def test_the_chap_password_is_a_secret():
    from bsud.config.schema import Config

    iscsi = EXPORT_KINDS["iscsi"].model_validate_json(json.dumps(ISCSI), strict=True)
    drive = parse_config(config(NFS)).drives[0].model_copy(update={"exports": (iscsi,)})
    loaded = Config(path="x", drives=(drive,), cloud=CloudSettings(), daemon=DaemonSettings(), access_key=None,
                    secret_key=None, credentials_from="none")
    assert "s3cret-passwd" in loaded.secrets()
    assert "s3cret-passwd" not in json.dumps(loaded.effective())


BAD = [
    ("nfs-absolute-path", {**NFS, "path": "/etc"}, "field 'exports #1 (nfs:/etc).path': '/etc' must be relative"),
    ("nfs-dotdot", {**NFS, "path": "a/../../etc"}, "must not hold spaces, control characters, '.' or '..'"),
    ("nfs-bad-client", {**NFS, "clients": ["10.0.0.0/33"]}, "'10.0.0.0/33' is not an address, a network"),
    ("nfs-no-client", {**NFS, "clients": []}, "field 'exports #1 (nfs).clients': needs at least 1 item"),
    ("nfs-fsid", {**NFS, "options": ["rw", "fsid=7"]}, "fsid is set by bsud"),
    ("nfs-unknown-option", {**NFS, "options": ["rw", "no_root_squah"]}, "'no_root_squah' is not an exports(5)"),
    ("nfs-rw-and-ro", {**NFS, "options": ["rw", "ro"]}, "give rw or ro, not both"),
    ("smb-reserved", {**SMB, "share": "homes"}, "'homes' is not a usable share name"),
    ("smb-guest-and-users", {**SMB, "guest": True}, "a guest share has no valid-users"),
    ("iscsi-bad-iqn", {**ISCSI, "iqn": "iqn.2026-13.com.example:x"}, "is not an IQN"),
    ("iscsi-upper-case", {**ISCSI, "iqn": "iqn.2026-11.com.Example:x"}, "is not an IQN"),
    ("iscsi-bad-initiator", {**ISCSI, "initiators": ["client1"]}, "'client1' is not an initiator IQN"),
    ("iscsi-short-chap", {**ISCSI, "chap": {"user": "u", "password": "short"}}, "must be 12 to 16 characters"),
    ("iscsi-zero-lun", {**ISCSI, "lun-size-gib": 0}, "lun-size-gib"),
    ("nvmeof-bad-nqn", {**NVME, "nqn": "nqn.2026-11.com.example"}, "is not an NQN"),
    ("nvmeof-bad-address", {**NVME, "address": "storage.local"}, "'storage.local' is not an IP address"),
    ("nvmeof-port", {**NVME, "port": 70000}, "port"),
    ("nvmeof-rdma", {**NVME, "transport": "rdma"}, "field 'exports #1 (nvmeof).transport': must be 'tcp'"),
    ("unknown-kind", {"kind": "ftp"}, "field 'exports #1 (ftp)': kind 'ftp' is not one of nfs, smb, iscsi, nvmeof"),
    ("no-kind", {"clients": ["*"]}, "field 'exports #1': each export needs a \"kind\""),
    ("typo-suggests", {**NFS, "optons": ["rw"]}, "field 'exports #1 (nfs).optons': unknown key; did you mean 'options'?"),
]


@pytest.mark.parametrize(("export", "expected"), [(e, m) for _, e, m in BAD], ids=[i for i, _, _ in BAD])
def test_a_bad_export_is_one_line_naming_drive_and_field(export, expected):
    found = problems(config(export))
    assert any(expected in line for line in found), found
    assert all(line.startswith("bsud.json: drive 'data': field 'exports") and "\n" not in line for line in found)


def test_two_exports_may_not_share_a_name_or_a_port():
    other = {"name": "logs", "target": "online", "mount-path": "/mnt/logs",
             "exports": [{**SMB, "share": "DATA"}, {**NVME, "nqn": "nqn.2026-11.com.example:logs"}]}
    found = problems(config(SMB, NVME, extra=[other]))
    assert any("drive 'logs'" in p and "the same share name as drive 'data' exports #1" in p for p in found), found
    assert any("the same address and port as drive 'data' exports #2" in p for p in found), found
    assert len(problems(config(NFS, dict(NFS)))) == 1  # one directory exported twice


def test_an_export_kinds_tools_are_needed_only_by_the_drives_using_it():
    from bsud.daemon import required_tools

    class Cloud:
        tools = ("losetup",)

    other = {"name": "logs", "target": "online", "mount-path": "/mnt/logs", "exports": [{**SMB, "share": "logs"}]}
    tools = required_tools(parse_config(config(NFS, SMB, extra=[other])), Cloud())  # type: ignore[arg-type]
    assert tools["btrfs"] == "" and tools["losetup"] == ""
    assert tools["exportfs"] == "the nfs exports of drive 'data'"
    assert tools["smbclient"] == "the smb exports of drive 'data', the smb exports of drive 'logs'"
    assert "modprobe" not in tools and "exportfs" not in required_tools(
        parse_config(config(SMB)), Cloud())  # type: ignore[arg-type]
