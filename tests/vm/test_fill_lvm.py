"""Never full on the lvm layout: the EC2 provider against moto, disks hot-plugged, real LVM under btrfs.

A steady writer at two rates on a fresh 1 GiB drive writes 1.25 GiB without fsync (more than the first volume
holds: the drive must grow in time): no ENOSPC, every byte back.
The figures (rate reached, reaction, grow time, volumes) are printed as bench/fill.py prints them; they are
not asserted (software emulation makes them slow and uneven), they go to docs/operations.md.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.fill import HEADER, GIB, Result, Writer, log_times

from .conftest import ec2_harness

pytestmark = pytest.mark.vm

RATES = (10e6, 30e6)


def test_steady_writers_never_fill_an_lvm_drive(vm, tmp_path: Path, capsys):
    vm.bridge.flavour = "aws"
    rows = []
    for index, rate in enumerate(RATES):
        drive = f"fill{index}"
        (tmp_path / drive).mkdir()
        h = ec2_harness(vm, tmp_path / drive, drive)
        try:
            h.start()
            h.wait_online(volumes=1, timeout=300)
            writer = Writer(h.mount / "stream.bin", rate, 5 * GIB // 4, verify=True)
            writer.run()
            assert not writer.enospc, f"ENOSPC after {writer.written >> 20} MiB at {rate / 1e6:.0f} MB/s:\n{h.tail()}"
            subprocess.run(["sync"], check=True)
            st = h.wait_online(timeout=300)
            assert len(st["volumes"]) >= 2
            assert writer.check() == []
            result = Result("bsud lvm (VM, EC2/moto)", 1, f"{rate / 1e6:.0f}", written=writer.written,
                            seconds=writer.seconds, volumes=sorted(v["size_gib"] for v in st["volumes"]))
            result.reaction, result.grow = log_times(h.log_path)
            rows.append(result.row())
            assert h.stop() == 0
        finally:
            h.close()
    with capsys.disabled():
        print("\n" + HEADER + "\n" + "\n".join(rows), flush=True)
