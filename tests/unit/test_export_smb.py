"""The SMB kind's pure parts and its transaction against a scripted Samba: the share file bsud writes, the one
include line added to smb.conf (backed up, once), a share name defined elsewhere refused, shares listed back."""

from __future__ import annotations

from pathlib import Path

import pytest

from bsud.exports.files import ExportError
from bsud.exports.smb import Samba, SmbExport, has_include, parse_share_list, render, sections
from bsud.runner import Completed


def smb(**kw) -> SmbExport:
    return SmbExport(kind="smb", **{"share": "data", **kw})


def test_the_share_file_names_each_share_with_its_path_and_access():
    text = render("d1", "/mnt/d1", [smb(), smb(share="Ro Share", path="pub", read_only=True, guest=True),
                                     smb(share="team", valid_users=("alice", "@staff"))])
    assert text.startswith("# Written by bsud for drive 'd1'")
    body = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert body == [
        "[data]", "path = /mnt/d1", "read only = no", "guest ok = no", "comment = bsud drive d1",
        "[Ro Share]", "path = /mnt/d1/pub", "read only = yes", "guest ok = yes", "comment = bsud drive d1",
        "[team]", "path = /mnt/d1", "read only = no", "guest ok = no", "valid users = alice @staff",
        "comment = bsud drive d1",
    ]
    assert sections(text) == ["data", "ro share", "team"]
    assert render("d1", "/mnt/d1", []) is None


def test_shares_listed_by_smbclient_and_the_include_line():
    listing = "Disk|data|bsud drive d1\nIPC|IPC$|IPC Service (Samba 4.17)\nDisk|Ro Share|\n"
    assert parse_share_list(listing) == ["data", "Ro Share"]
    target = Path("/etc/samba/bsud.conf")
    assert has_include("[global]\n   include = /etc/samba/bsud.conf \n", target)
    assert not has_include("[global]\n;include = /etc/samba/bsud.conf\n", target)
    assert not has_include("include = /etc/samba/bsud.conf.old\n", target)


class ScriptedSamba:
    """A runner standing in for testparm/smbcontrol/smbclient: smbd 'loads' what the files on disk say."""

    def __init__(self, samba_dir: Path, fail_testparm: str | None = None, deaf: bool = False) -> None:
        self.dir = samba_dir
        self.fail_testparm = fail_testparm
        self.deaf = deaf  # smbd takes no reload: it keeps what it had
        self.served: list[str] = []
        self.calls: list[list[str]] = []

    def loaded_shares(self) -> list[str]:
        names: list[str] = []
        conf = self.dir / "smb.conf"
        text = conf.read_text()
        names += sections(text)
        if has_include(text, self.dir / "bsud.conf"):
            for line in (self.dir / "bsud.conf").read_text().splitlines():
                if line.startswith("include = "):
                    path = Path(line.split(" = ", 1)[1])
                    if path.exists():
                        names += sections(path.read_text())
        return names

    def run(self, argv, **kw) -> Completed:
        self.calls.append(list(argv))
        out, rc = "", 0
        match argv[:2]:
            case ["testparm", "-s"]:
                text = Path(argv[2]).read_text()
                if self.fail_testparm and self.fail_testparm in text:
                    return Completed(tuple(argv), 1, "", "Error loading services.", 0.0)
                out = "".join(f"[{n}]\n" for n in sections(text))
            case ["smbcontrol", "smbd"]:
                out = "PONG from pid 42\n"
            case ["smbcontrol", "all"]:
                if not self.deaf:
                    self.served = self.loaded_shares()
            case ["smbclient", _]:
                out = "".join(f"Disk|{n}|\n" for n in self.served if n != "global")
        return Completed(tuple(argv), rc, out, "", 0.0)


@pytest.fixture
def samba_dir(tmp_path: Path) -> Path:
    (tmp_path / "smb.conf").write_text("[global]\n   workgroup = WORKGROUP\n\n[printers]\n   path = /var/tmp\n")
    (tmp_path / "mnt").mkdir()
    return tmp_path


def mounted(monkeypatch) -> None:
    monkeypatch.setattr("bsud.exports.smb.os.path.ismount", lambda p: True)


def test_apply_adds_the_include_once_and_withdraw_takes_the_shares_away(samba_dir: Path, monkeypatch):
    mounted(monkeypatch)
    runner = ScriptedSamba(samba_dir)
    samba = Samba(runner, samba_dir)  # type: ignore[arg-type]
    original = (samba_dir / "smb.conf").read_text()
    mnt = str(samba_dir / "mnt")
    assert samba.apply("d1", mnt, [smb()]) is True
    assert (samba_dir / "smb.conf.before-bsud").read_text() == original
    conf = (samba_dir / "smb.conf").read_text()
    assert conf.startswith(original) and conf.count("include = ") == 1
    assert "data" in runner.served and samba.observe("d1", mnt, [smb()]).applied
    assert samba.apply("d1", mnt, [smb()]) is False  # nothing to do
    assert samba.apply("d2", mnt, [smb(share="other", path="o")]) is True
    assert (samba_dir / "smb.conf").read_text().count("include = ") == 1  # once, whatever the drives
    assert {"data", "other"} <= set(runner.served)

    # Drift: smbd restarted without our shares (the files are right): reloaded.
    runner.served = []
    assert not samba.observe("d1", mnt, [smb()]).applied
    assert samba.apply("d1", mnt, [smb()]) is True and "data" in runner.served

    assert samba.withdraw("d1") is True
    assert "data" not in runner.served and "other" in runner.served
    assert not samba.file("d1").exists() and samba.withdraw("d1") is False
    state = samba.observe("d1", mnt, [])
    assert state.applied and not state.present


def test_a_share_defined_elsewhere_or_a_file_testparm_refuses_changes_nothing(samba_dir: Path, monkeypatch):
    mounted(monkeypatch)
    runner = ScriptedSamba(samba_dir, fail_testparm="broken")
    samba = Samba(runner, samba_dir)  # type: ignore[arg-type]
    mnt = str(samba_dir / "mnt")
    samba.apply("d1", mnt, [smb()])
    good = samba.file("d1").read_text()
    with pytest.raises(ExportError, match=r"\[Printers\] is already defined in .*smb.conf"):
        samba.apply("d1", mnt, [smb(share="Printers")])
    with pytest.raises(ExportError, match="testparm: Error loading services"):
        samba.apply("d1", mnt, [smb(share="data", path="broken")])
    assert samba.file("d1").read_text() == good and "data" in runner.served
    assert not list(samba_dir.glob("bsud.d/.*"))  # no temp file left


def test_smbd_that_does_not_take_the_change_is_rolled_back(samba_dir: Path, monkeypatch):
    mounted(monkeypatch)
    monkeypatch.setattr("bsud.exports.smb.RELOAD_SECONDS", 0.0)
    runner = ScriptedSamba(samba_dir)
    samba = Samba(runner, samba_dir)  # type: ignore[arg-type]
    mnt = str(samba_dir / "mnt")
    samba.apply("d1", mnt, [smb()])
    good = samba.file("d1").read_text()
    runner.deaf = True
    with pytest.raises(ExportError, match="the previous file is back: after smbcontrol all reload-config, smbd "
                                          "does not list the share other"):
        samba.apply("d1", mnt, [smb(share="other")])
    assert samba.file("d1").read_text() == good
    assert "include = " + str(samba.file("d1")) in (samba_dir / "bsud.conf").read_text()


def test_a_drive_without_smb_shares_runs_nothing(samba_dir: Path):
    runner = ScriptedSamba(samba_dir)
    state = Samba(runner, samba_dir).observe("d1", str(samba_dir / "mnt"), [])  # type: ignore[arg-type]
    assert state.applied and not state.present and runner.calls == []
