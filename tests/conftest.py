"""Test lanes: unit (pure) · cloud (moto) · host (root, loop devices, btrfs) · vm (inside scripts/vm-test).

A lane that cannot run here is skipped with a reason naming what is missing.
"""

from __future__ import annotations

import os
import shutil

import pytest

from bsud.logs import configure_logging

configure_logging("debug", json=True)


def _host_lane_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices, mount)"
    if not os.path.exists("/dev/loop-control"):
        return "needs loop devices (/dev/loop-control is missing)"
    for tool in ("losetup", "mkfs.btrfs", "btrfs", "blkid", "wipefs"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return f"needs {tool} (run scripts/setup)"
    with open("/proc/filesystems") as fh:
        if "btrfs" not in fh.read():
            try:
                import subprocess

                subprocess.run(["modprobe", "btrfs"], check=False, capture_output=True, timeout=30)
            except OSError:
                pass
            with open("/proc/filesystems") as again:
                if "btrfs" not in again.read():
                    return "needs btrfs in the kernel"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    host_missing = _host_lane_missing()
    in_vm = os.environ.get("BSUD_IN_VM") == "1"
    for item in items:
        if "host" in item.keywords and host_missing:
            item.add_marker(pytest.mark.skip(reason=f"host lane: {host_missing}"))
        if "vm" in item.keywords and not in_vm:
            item.add_marker(pytest.mark.skip(
                reason="vm lane: needs device-mapper, udevd and hot-plugged disks; runs inside scripts/vm-test"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    from tests.host.daemon_harness import DaemonHarness
    DaemonHarness.running.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """A failed test's report ends with the last lines of each daemon log its harnesses wrote."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when == "call":
        from tests.host.daemon_harness import DaemonHarness
        for n, harness in enumerate(DaemonHarness.running):
            if harness.log_path.exists():
                report.sections.append((f"bsud log {n} ({harness.log_path}, last 80 lines)", harness.tail(80)))
