"""The development scripts as a user runs them: from any directory, with relative paths."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[2]


def test_delete_drive_reads_a_relative_config_from_the_callers_directory(workdir: Path):
    (workdir / "c.json").write_text(json.dumps({"cloud": {"provider": "local", "state-dir": str(workdir / "state")},
                                                "drives": []}))
    done = subprocess.run([str(ROOT / "scripts" / "delete-drive"), "-c", "c.json", "gone"], cwd=workdir,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "file not found" not in done.stderr
