"""The config-file transaction on a temp directory: replace, validate first, roll back on a failed reload or
verification, withdraw, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from bsud.exports.files import ExportError, replace_file


class Service:
    """Reads the file at each reload, as a daemon does; its verification fails while it serves a broken file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.serving: str | None = None
        self.reloads = 0

    def reload(self) -> None:
        self.reloads += 1
        self.serving = self.path.read_text() if self.path.exists() else None

    def verify(self) -> None:
        if self.serving is not None and "broken" in self.serving:
            raise RuntimeError("the service does not list the export")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "bsud" in p.name)


def test_a_new_file_is_written_whole_and_reloaded_once(tmp_path: Path):
    path = tmp_path / "exports.d" / "bsud-data.exports"
    svc = Service(path)
    assert replace_file(path, "/mnt/data *(rw)\n", apply=svc.reload, verify=svc.verify)
    assert svc.serving == "/mnt/data *(rw)\n" and svc.reloads == 1
    assert not replace_file(path, "/mnt/data *(rw)\n", apply=svc.reload, verify=svc.verify)  # nothing to do
    assert svc.reloads == 1 and leftovers(path.parent) == ["bsud-data.exports"]


def test_a_failed_verification_puts_the_old_file_back_and_reloads_it(tmp_path: Path):
    path = tmp_path / "bsud.conf"
    path.write_text("good\n")
    path.chmod(0o640)
    svc = Service(path)
    svc.reload()
    with pytest.raises(ExportError, match="applying failed, the previous file is back: the service does not list"):
        replace_file(path, "broken\n", apply=svc.reload, verify=svc.verify)
    assert path.read_text() == "good\n" and svc.serving == "good\n" and svc.reloads == 3
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert leftovers(tmp_path) == ["bsud.conf"]


def test_a_file_that_does_not_validate_changes_nothing(tmp_path: Path):
    path = tmp_path / "bsud.conf"
    path.write_text("good\n")
    svc = Service(path)

    def validate(temp: Path) -> None:
        assert temp.parent == path.parent and temp != path
        if "broken" in temp.read_text():
            raise ValueError("testparm: unknown parameter")

    with pytest.raises(ExportError, match="does not validate, nothing changed: testparm: unknown parameter"):
        replace_file(path, "broken\n", apply=svc.reload, verify=svc.verify, validate=validate)
    assert path.read_text() == "good\n" and svc.reloads == 0 and leftovers(tmp_path) == ["bsud.conf"]


def test_withdrawing_removes_the_file_and_a_failure_brings_it_back(tmp_path: Path):
    path = tmp_path / "bsud.conf"
    path.write_text("served\n")
    svc = Service(path)
    calls = []

    def stuck() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the export is still listed")

    with pytest.raises(ExportError, match="withdrawing failed"):
        replace_file(path, None, apply=svc.reload, verify=stuck)
    assert path.read_text() == "served\n"
    assert replace_file(path, None, apply=svc.reload, verify=stuck)
    assert not path.exists() and svc.serving is None and leftovers(tmp_path) == []


def test_a_new_file_that_fails_is_removed_again(tmp_path: Path):
    path = tmp_path / "bsud.conf"
    svc = Service(path)
    with pytest.raises(ExportError):
        replace_file(path, "broken\n", apply=svc.reload, verify=svc.verify)
    assert not path.exists() and svc.serving is None


def test_a_right_file_the_service_forgot_is_applied_again(tmp_path: Path):
    path = tmp_path / "bsud-data.exports"
    svc = Service(path)
    assert replace_file(path, "/mnt/data *(rw)\n", apply=svc.reload, verify=svc.verify)
    drifted = lambda: svc.serving != path.read_text()  # noqa: E731
    assert not replace_file(path, "/mnt/data *(rw)\n", apply=svc.reload, verify=svc.verify, drifted=drifted)
    svc.serving = None  # restarted without it
    assert replace_file(path, "/mnt/data *(rw)\n", apply=svc.reload, verify=svc.verify, drifted=drifted)
    assert svc.serving == "/mnt/data *(rw)\n" and svc.reloads == 2
