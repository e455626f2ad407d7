"""Never full: a steady writer that filled a 2 GiB drive before live usage (ENOSPC after 1827 MiB at 50 MB/s)
writes 3 GiB with no error, and every byte reads back with its checksum. Local provider, btrfs layout, the
daemon as a process with its default sampling."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.fill import Writer

from .daemon_harness import DaemonHarness

pytestmark = pytest.mark.host

GIB = 1024**3


@pytest.fixture
def harness(workdir: Path):
    # the daemon's own sampling interval, not the harness's
    h = DaemonHarness(workdir, drive="nofill", daemon={"usage-interval-seconds": None},
                      **{"initial-size-gib": 2, "max-bsu-count": 6, "max-total-size-gib": 16})
    yield h
    h.close()


def test_steady_writer_never_fills_the_drive(harness: DaemonHarness):
    h = harness
    h.start()
    h.wait_online(volumes=1)
    writer = Writer(h.mount / "stream.bin", 50e6, 3 * GIB, verify=True)
    writer.run()
    assert not writer.enospc, f"ENOSPC after {writer.written >> 20} MiB; log tail:\n{h.tail()}"
    assert writer.written == 3 * GIB
    subprocess.run(["sync"], check=True)

    st = h.wait_online()
    assert len(st["volumes"]) >= 2 and st["size_gib"] >= 4
    log = h.log_path.read_text()
    assert "scale-up trigger" in log and "grow done: capacity usable" in log
    assert writer.check() == []  # every byte back, in order
    assert h.stop() == 0
