"""Applying a block export (NVMe/TCP through nvmet, iSCSI through LIO) at the exporter's seam, on a fake configfs and
a recorded /proc/net under tmp_path: every precondition (the mount, the NQN/IQN not taken, the port free, no file
to shrink) is checked before the backing file is made, and a file the failed attempt made is taken away — never one
that was there before, nor one written to meanwhile."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from bsud.exports import lio as iscsi_module
from bsud.exports.iscsi import IscsiExport
from bsud.exports.files import ExportError
from bsud.exports.iscsi_target import lun_file
from bsud.exports.lio import Lio
from bsud.exports.nvmeof import NvmeofExport
from bsud.exports.nvmeof_target import namespace_file
from bsud.exports.nvmet import NvmetTcp

RECORDED = Path(__file__).parent.parent / "data" / "proc_net"
NQN = "nqn.2026-11.test.bsud:drive"
IQN = "iqn.2026-11.test.bsud:drive"
GIB = 1 << 30


class Runner:
    """modprobe and mount, recorded (the fake configfs is there already)."""

    def __init__(self) -> None:
        self.ran: list[list[str]] = []

    def run(self, argv, **kw):
        self.ran.append(list(argv))


@pytest.fixture
def host(tmp_path: Path, monkeypatch) -> Path:
    """tmp_path/configfs (nvmet's and LIO's trees), tmp_path/proc_net (nothing listens), tmp_path/mnt (the drive,
    mounted unless a test says otherwise)."""
    for tree in ("nvmet/subsystems", "nvmet/ports", "nvmet/hosts", "target/iscsi"):
        (tmp_path / "configfs" / tree).mkdir(parents=True)
    (tmp_path / "proc_net").mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (tmp_path / "proc_net" / "tcp").write_text(header)
    (tmp_path / "mnt").mkdir()
    monkeypatch.setattr("bsud.exports.nvmet.os.path.ismount", lambda p: True)
    monkeypatch.setattr(iscsi_module, "DBROOT", tmp_path / "etc-target")
    for module in ("configfs", "target_core_mod", "target_core_file", "iscsi_target_mod", "nvmet", "nvmet_tcp"):
        (tmp_path / "sys-module" / module).mkdir(parents=True)  # loaded already
    monkeypatch.setattr("bsud.host.kernel.SYS_MODULE", tmp_path / "sys-module")
    return tmp_path


def listen(host: Path, *addresses: str) -> None:
    """Something listens on each ``hex address:hex port`` (the /proc/net/tcp form: 0100007F:1145 is 127.0.0.1:4421)."""
    with open(host / "proc_net" / "tcp", "a") as fh:
        for n, address in enumerate(addresses):
            fh.write(f"{n:4d}: {address} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
                     f"{9000 + n} 1 0000000000000000 100 0 0 10 0\n")


def nvme(**kw) -> NvmeofExport:
    return NvmeofExport.model_validate({"kind": "nvmeof", "nqn": NQN, "path": "ns", "size-gib": 2,
                                        "hosts": ["nqn.2026-11.test.bsud:host"], "address": "127.0.0.1", "port": 4421,
                                        **kw})


class RefusingNvmet(NvmetTcp):
    """nvmet refusing the new subsystem once asked to make it (the kernel's refusal, injected); ``write`` first
    writes to the namespace's file, as a host connected for a moment would have."""

    write = False

    def _create(self, drive, want):
        if self.write:
            with open(want.file, "r+b") as fh:
                fh.write(b"a host's data")
                fh.flush()
        raise OSError(errno.EADDRINUSE, "injected: nvmet could not make the subsystem")


def nvmet(host: Path, cls: type[NvmetTcp] = RefusingNvmet) -> NvmetTcp:
    return cls(Runner(), configfs=host / "configfs", proc_net=host / "proc_net")  # type: ignore[arg-type]


def head(file: Path, n: int) -> bytes:
    with open(file, "rb") as fh:
        return fh.read(n)


def made_in_drive(host: Path) -> list[str]:
    return sorted(str(p.relative_to(host / "mnt")) for p in (host / "mnt").rglob("*"))


def test_a_port_another_program_holds_refuses_the_export_before_anything_is_made(host: Path):
    listen(host, "0100007F:1145")  # 127.0.0.1:4421
    with pytest.raises(ExportError) as info:
        nvmet(host).apply("data", str(host / "mnt"), [nvme()])
    message = str(info.value)
    assert message == (f"NVMe-oF export of drive 'data': {NQN}: port 127.0.0.1:4421 is in use by another program "
                       "(listening on 127.0.0.1:4421); free it or choose another address or port")
    assert "\n" not in message
    assert made_in_drive(host) == []  # no 2 GiB file, not even its directory
    assert list((host / "configfs" / "nvmet" / "subsystems").iterdir()) == []
    assert list((host / "configfs" / "nvmet" / "ports").iterdir()) == []


def test_a_wildcard_listener_on_the_port_refuses_it_too(host: Path):
    listen(host, "00000000:1145")  # 0.0.0.0:4421
    with pytest.raises(ExportError, match=r"in use by another program \(listening on 0\.0\.0\.0:4421\)"):
        nvmet(host).apply("data", str(host / "mnt"), [nvme()])
    assert made_in_drive(host) == []


def test_a_listener_at_another_address_is_no_obstacle_and_a_file_made_for_a_failed_export_goes(host: Path):
    listen(host, "0200007F:1145")  # 127.0.0.2:4421: the same port, another address
    with pytest.raises(ExportError) as info:
        nvmet(host).apply("data", str(host / "mnt"), [nvme()])
    assert "in use" not in str(info.value)
    assert "the previous subsystems are back: [Errno 98] injected: nvmet could not make" in str(info.value)
    assert made_in_drive(host) == []  # the file (and its directory) this attempt made are gone


def test_a_file_that_was_there_before_is_never_removed(host: Path):
    file = Path(namespace_file(str(host / "mnt"), nvme()))
    file.parent.mkdir()
    with open(file, "wb") as fh:
        fh.write(b"the clients' data")
        fh.truncate(2 * GIB)
    with pytest.raises(ExportError, match="injected"):
        nvmet(host).apply("data", str(host / "mnt"), [nvme()])
    assert file.stat().st_size == 2 * GIB and head(file, 17) == b"the clients' data"


def test_a_file_written_to_before_the_attempt_failed_is_kept(host: Path):
    refusing = nvmet(host)
    refusing.write = True  # type: ignore[attr-defined]
    with pytest.raises(ExportError, match="injected"):
        refusing.apply("data", str(host / "mnt"), [nvme()])
    file = Path(namespace_file(str(host / "mnt"), nvme()))
    assert head(file, 13) == b"a host's data"


def test_an_nqn_someone_else_uses_or_an_unmounted_drive_makes_nothing(host: Path, monkeypatch):
    other = host / "configfs" / "nvmet" / "subsystems" / NQN
    other.mkdir()
    (other / "attr_model").write_text("Linux\n")
    with pytest.raises(ExportError, match=f"subsystem {NQN} exists and does not belong to drive 'data'"):
        nvmet(host).apply("data", str(host / "mnt"), [nvme()])
    assert made_in_drive(host) == []
    other.joinpath("attr_model").unlink()
    other.rmdir()
    monkeypatch.setattr("bsud.exports.nvmet.os.path.ismount", lambda p: False)
    with pytest.raises(ExportError, match="not mounted"):
        nvmet(host).apply("data", str(host / "mnt"), [nvme()])
    assert made_in_drive(host) == []


def test_a_file_that_would_shrink_refuses_the_change_before_another_exports_file_is_made(host: Path):
    big = nvme(nqn="nqn.2026-11.test.bsud:big", port=4422, path="")
    file = Path(namespace_file(str(host / "mnt"), big))
    with open(file, "wb") as fh:
        fh.truncate(3 * GIB)
    with pytest.raises(ExportError, match="a namespace is never shrunk"):
        nvmet(host).apply("data", str(host / "mnt"), [nvme(), big])
    assert made_in_drive(host) == [file.name] and file.stat().st_size == 3 * GIB


# -- iSCSI: LIO listens on 0.0.0.0:3260, so any listener on 3260 that is not LIO's own is in the way -----------

def iscsi() -> IscsiExport:
    return IscsiExport.model_validate({"kind": "iscsi", "iqn": IQN, "path": "luns", "lun-size-gib": 2,
                                       "initiators": ["iqn.2026-11.test.bsud:client"]})


class FakeRoot:
    """rtslib's root with no target, whose restore does nothing."""

    targets: list = []

    def restore(self, config):
        return []


class RefusingLio(Lio):
    def _ours(self, drive):
        return {}

    def _create(self, want):
        from rtslib_fb import RTSLibError

        raise RTSLibError("injected: LIO could not make the target")


@pytest.fixture
def lio(host: Path, monkeypatch) -> Lio:
    pytest.importorskip("rtslib_fb")
    monkeypatch.setattr("rtslib_fb.RTSRoot", FakeRoot)
    return RefusingLio(Runner(), configfs=host / "configfs", proc_net=host / "proc_net")  # type: ignore[arg-type]


@pytest.mark.parametrize(("listener", "shown"),
                         [("00000000:0CBC", "0.0.0.0:3260"), ("0100007F:0CBC", "127.0.0.1:3260")])
def test_port_3260_another_program_holds_refuses_the_lun_before_its_file_is_made(host: Path, lio: Lio, listener: str,
                                                                                  shown: str):
    listen(host, listener)
    with pytest.raises(ExportError) as info:
        lio.apply("data", str(host / "mnt"), [iscsi()])
    assert str(info.value) == (f"iSCSI export {IQN} of drive 'data': port 0.0.0.0:3260 is in use by another program "
                               f"(another iSCSI target server?), listening on {shown}; free it (bsud's targets listen "
                               "on every address)")
    assert made_in_drive(host) == []


def test_lios_own_portal_on_3260_is_no_obstacle_and_a_lun_file_made_for_a_failed_target_goes(host: Path, lio: Lio):
    listen(host, "00000000:0CBC")
    (host / "configfs" / "target" / "iscsi" / "iqn.2026-11.other:t" / "tpgt_1" / "np" / "0.0.0.0:3260").mkdir(
        parents=True)
    with pytest.raises(ExportError, match="the previous targets are back: .*injected: LIO could not make the target"):
        lio.apply("data", str(host / "mnt"), [iscsi()])
    assert made_in_drive(host) == []
    file = Path(lun_file(str(host / "mnt"), iscsi()))
    file.parent.mkdir()
    file.write_bytes(b"the clients' data")
    with pytest.raises(ExportError, match="injected"):
        lio.apply("data", str(host / "mnt"), [iscsi()])
    assert head(file, 17) == b"the clients' data" and file.stat().st_size == 2 * GIB  # grown, never removed


def test_the_recorded_proc_net_is_what_the_exporters_read(host: Path):
    """The same rule as tests/unit/test_export_ports.py, through the exporter: 127.0.0.2:4423 listening does not
    keep nvmet from 127.0.0.1:4423 (the defect issue 20 measured)."""
    shutil.copy(RECORDED / "tcp", host / "proc_net" / "tcp")
    with pytest.raises(ExportError) as info:
        nvmet(host).apply("data", str(host / "mnt"), [nvme(port=4423)])
    assert "injected" in str(info.value) and "in use" not in str(info.value)
    with pytest.raises(ExportError, match=r"port 127\.0\.0\.2:4423 is in use by another program"):
        nvmet(host).apply("data", str(host / "mnt"), [nvme(address="127.0.0.2", port=4423)])
    assert made_in_drive(host) == []
