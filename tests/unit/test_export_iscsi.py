"""The block export kinds' pure parts (iSCSI, NVMe-oF): names of what bsud owns in LIO and nvmet, the backing file
(sparse, never shrunk), the CHAP password kept out of reprs. (Ports: test_export_ports.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bsud.exports.iscsi import IscsiExport
from bsud.exports.files import ExportError, backing_file
from bsud.exports.iscsi_target import Wanted, backstore_name, lun_file
from bsud.exports.lio import Lio
from bsud.naming import GIB
from bsud.exports.nvmeof_target import model
from bsud.exports.nvmet import NvmetTcp

IQN = "iqn.2026-11.com.example:data"


def iscsi(**kw) -> IscsiExport:
    return IscsiExport.model_validate({"kind": "iscsi", "iqn": IQN, "lun-size-gib": 2,
                                       "initiators": ["iqn.2026-11.com.example:client"], **kw})


def test_names_are_stable_per_drive_and_iqn_and_recognise_the_drive():
    name = backstore_name("data", IQN)
    assert name == backstore_name("data", IQN) and name.startswith("bsud_data_") and len(name) == len("bsud_data_") + 8
    assert name != backstore_name("data", IQN + "2") and not backstore_name("data2", IQN).startswith("bsud_data_")
    assert backstore_name("my.drive", IQN).startswith("bsud_my_drive_")
    assert lun_file("/mnt/d", iscsi()) == f"/mnt/d/iscsi-{IQN}.img"
    assert lun_file("/mnt/d", iscsi(path="luns")) == f"/mnt/d/luns/iscsi-{IQN}.img"


def test_the_chap_password_is_compared_never_shown():
    want = Wanted.of("d", "/mnt/d", iscsi(chap={"user": "u", "password": "s3cret-passwd"}))
    assert want.chap_password == "s3cret-passwd" and want.size == 2 * GIB
    assert "s3cret" not in repr(want) and "s3cret" not in str(want)


def test_the_backing_file_is_sparse_grows_and_is_never_shrunk(tmp_path: Path):
    path = tmp_path / "luns" / "lun.img"
    backing_file(str(path), 2 * GIB, what=IQN, kind="LUN")
    assert path.stat().st_size == 2 * GIB and path.stat().st_blocks == 0  # sparse: takes no space yet
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with open(path, "r+b") as fh:
        fh.write(b"data")
    backing_file(str(path), 3 * GIB, what=IQN, kind="LUN")
    with open(path, "rb") as fh:
        assert path.stat().st_size == 3 * GIB and fh.read(4) == b"data"
    with pytest.raises(ExportError, match="a LUN is never shrunk"):
        backing_file(str(path), 2 * GIB, what=IQN, kind="LUN")
    assert path.stat().st_size == 3 * GIB


def test_a_drive_without_block_exports_reads_nothing(tmp_path: Path):
    for kind in (Lio, NvmetTcp):
        state = kind(runner=None, configfs=tmp_path).observe("d", "/mnt/d", [])  # type: ignore[arg-type]
        assert state.applied and not state.present
    assert not os.listdir(tmp_path)


def test_the_nvme_model_string_names_the_drive_within_40_characters():
    assert model("data") == "bsud-data"
    long_a, long_b = "a" * 60, "a" * 59 + "b"
    assert len(model(long_a)) == 40 and model(long_a) != model(long_b)


def test_a_namespace_made_again_is_the_same_device_to_hosts():
    from bsud.exports.nvmeof_target import identity

    serial, ns_uuid = identity("data", "nqn.2026-11.com.example:data")
    assert (serial, ns_uuid) == identity("data", "nqn.2026-11.com.example:data")
    assert len(serial) == 20 and serial.isalnum()
    other_nqn, other_drive = identity("data", "nqn.2026-11.com.example:o"), identity("logs", "nqn.2026-11.com.example:data")
    assert other_nqn[1] != ns_uuid != other_drive[1]
