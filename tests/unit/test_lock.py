"""The locks: one daemon per status file, one ``bsud snapshot`` per drive (real flock on files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bsud.lock import AlreadyRunning, snapshot_lock, snapshot_running, take_lock


def test_a_second_snapshot_of_a_drive_is_refused_while_the_first_holds_its_lock(tmp_path: Path):
    status = str(tmp_path / "run" / "status.json")
    assert not snapshot_running(status, "data")
    with snapshot_lock(status, "data"):
        assert snapshot_running(status, "data")
        assert not snapshot_running(status, "other")
        with pytest.raises(AlreadyRunning) as info:
            with snapshot_lock(status, "data"):
                pass
        assert str(info.value) == (f"another 'bsud snapshot' of drive 'data' is running (pid {os.getpid()}); "
                                   "let it end")
        with snapshot_lock(status, "other"):  # another drive's is its own
            assert snapshot_running(status, "other")
    assert not snapshot_running(status, "data")
    with snapshot_lock(status, "data"):  # released: taken again
        pass


def test_a_second_daemon_on_the_same_status_file_is_refused_naming_the_first(tmp_path: Path):
    status = str(tmp_path / "status.json")
    fd = take_lock(status)
    try:
        with pytest.raises(AlreadyRunning, match=f"another bsud \\(pid {os.getpid()}\\) is running with status file"):
            take_lock(status)
    finally:
        os.close(fd)
    os.close(take_lock(status))
