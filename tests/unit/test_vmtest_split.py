"""scripts/vmtest.py's split of the VM lane over parallel guests: balanced by weight, the systemd lane's files in one
systemd guest (one boot of systemd, not one per runner)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_vmtest():
    spec = importlib.util.spec_from_file_location("vmtest", ROOT / "scripts" / "vmtest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_systemd_files_share_one_guest_and_the_runners_are_balanced():
    vmtest = load_vmtest()
    files = sorted(f"tests/vm/{p.name}" for p in (ROOT / "tests" / "vm").glob("test_*.py"))
    runners = vmtest.split(files, 2)
    assert sorted(f for runner in runners for guest in runner for f in guest) == files  # each file once
    systemd_guests = [guest for runner in runners for guest in runner
                      if any(Path(f).name in vmtest.SYSTEMD_FILES for f in guest)]
    assert len(systemd_guests) == 1 and {Path(f).name for f in systemd_guests[0]} == set(vmtest.SYSTEMD_FILES)
    loads = [sum(vmtest.WEIGHTS.get(Path(f).name, 120) for guest in runner for f in guest) for runner in runners]
    assert max(loads) - min(loads) <= max(vmtest.WEIGHTS.values()), loads
    (alone,) = vmtest.split(files, 1)
    assert [sorted(guest) for guest in alone] == [[f for f in files if Path(f).name not in vmtest.SYSTEMD_FILES],
                                                  [f for f in files if Path(f).name in vmtest.SYSTEMD_FILES]]
