"""An export's kernel modules: through systemd's modprobe@.service where systemd runs (bsud's unit has no
CAP_SYS_MODULE), modprobe elsewhere; one line when one will not load."""

from __future__ import annotations

from pathlib import Path

import pytest

from bsud.errors import BsudError
from bsud.host import kernel


class Runner:
    """Loads what it is asked to (a directory under the fake /sys/module), but never ``broken``."""

    def __init__(self, sys_module: Path) -> None:
        self.sys_module = sys_module
        self.ran: list[list[str]] = []

    def run(self, argv, **_):
        self.ran.append(list(argv))
        names = [a.removeprefix("modprobe@").removesuffix(".service") for a in argv[1:] if a != "start"]
        for name in names:
            if name != "broken":
                (self.sys_module / name.replace("-", "_")).mkdir(exist_ok=True)


@pytest.fixture
def sys_module(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "nvmet").mkdir()
    monkeypatch.setattr(kernel, "SYS_MODULE", tmp_path)
    monkeypatch.setattr(kernel, "builtin_modules", lambda release=None: {"configfs"})
    return tmp_path


def test_systemd_loads_what_is_missing_in_one_call(sys_module: Path, monkeypatch):
    monkeypatch.setattr(kernel, "systemd_running", lambda: True)
    runner = Runner(sys_module)
    kernel.load_modules(runner, ("configfs", "nvmet", "nvmet-tcp", "target_core_mod"))  # type: ignore[arg-type]
    assert runner.ran == [["systemctl", "start", "modprobe@nvmet-tcp.service", "modprobe@target_core_mod.service"]]
    kernel.load_modules(runner, ("nvmet", "nvmet-tcp"))  # type: ignore[arg-type]
    assert len(runner.ran) == 1  # all loaded: nothing run


def test_without_systemd_modprobe_loads_them(sys_module: Path, monkeypatch):
    monkeypatch.setattr(kernel, "systemd_running", lambda: False)
    runner = Runner(sys_module)
    kernel.load_modules(runner, ("nvmet", "nvmet-tcp", "iscsi_target_mod"))  # type: ignore[arg-type]
    assert runner.ran == [["modprobe", "nvmet-tcp"], ["modprobe", "iscsi_target_mod"]]


def test_a_module_that_will_not_load_is_one_line(sys_module: Path, monkeypatch):
    monkeypatch.setattr(kernel, "systemd_running", lambda: True)
    with pytest.raises(BsudError) as info:
        kernel.load_modules(Runner(sys_module), ("nvmet-tcp", "broken"))  # type: ignore[arg-type]
    assert str(info.value) == ("kernel module broken would not load; check that the running kernel has it "
                               "(modprobe broken)")
    assert info.value.temporary
