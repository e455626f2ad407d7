"""Running the bsud daemon as a process on the local provider, for the host lane."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]


def checksums(directory: Path) -> dict[str, str]:
    """sha256 of every *.bin file the tests wrote on the drive."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.bin"))}


class DaemonHarness:
    #: The harnesses of the test running now: a failed test's report ends with their daemons' last log lines
    #: (tests/conftest.py) — CI keeps no workdir, and the log is what tells a race from a bug.
    running: list[DaemonHarness] = []

    def __init__(self, workdir: Path, drive: str = "lifecycle", cloud: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, daemon: dict[str, Any] | None = None,
                 **drive_settings: Any) -> None:
        self.workdir = workdir
        self.drive = drive
        self.config_path = workdir / "bsud.json"
        self.status_path = workdir / "status.json"
        self.state_dir = workdir / "state"
        self.mount = workdir / "mnt"
        self.log_path = workdir / "bsud.log"
        self.proc: subprocess.Popen | None = None
        self.cloud = cloud or {"provider": "local", "state-dir": str(self.state_dir), "instance-id": "i-lifecycle"}
        self.extra = extra or {}
        #: The daemon section: short periods for tests; a value of None leaves the daemon's default.
        self.daemon = {"usage-interval-seconds": 0.5, "full-check-seconds": 3, "retry-seconds": 0.5,
                       "cloud-refresh-seconds": 30, **(daemon or {})}
        self.settings = {
            "name": drive, "target": "online", "mount-path": str(self.mount), "layout": "btrfs",
            "initial-size-gib": 1, "max-bsu-count": 4, "max-total-size-gib": 8,
            "max-used-space-perc": 85, "min-used-space-perc": 40, "disk-scale-factor-perc": 20,
            **drive_settings,
        }
        self.write_config()
        DaemonHarness.running.append(self)

    def write_config(self, **changes: Any) -> None:
        self.settings.update(changes)
        doc = {
            **self.extra,
            "cloud": self.cloud,
            "daemon": {**{k: v for k, v in self.daemon.items() if v is not None},
                       "status-file": str(self.status_path)},
            "drives": [self.settings],
        }
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.config_path)

    def start(self, crash: str | None = None, group: bool = False, **env: str) -> None:
        """Start the daemon; with ``crash``, through tests.crashpoint, which SIGKILLs it there (see that module).

        A session of its own, so that a kill of its process group reaches nothing else."""
        full_env = {**os.environ, **env}
        module = "bsud"
        if crash:
            module = "tests.crashpoint"
            full_env.update(BSUD_CRASH=crash, BSUD_CRASH_GROUP="1" if group else "0")
        self.log = open(self.log_path, "a")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", module, "-c", str(self.config_path)], cwd=ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
                                     start_new_session=True)

    def close(self) -> None:
        """Kill the daemon if it still runs and delete the drive: nothing left behind, even after a failure."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        subprocess.run([sys.executable, "-m", "bsud", "delete-drive", "--yes", "-c", str(self.config_path), "--all"],
                       capture_output=True, cwd=ROOT, timeout=600)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        self.proc = None
        return rc

    def wait_exit(self, timeout: float = 120) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        self.proc = None
        return rc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any]:
        """The drive's status as the running daemon wrote it (a file left by an earlier process does not count)."""
        try:
            data = json.loads(self.status_path.read_text())
            if self.proc is not None and data.get("pid") != self.proc.pid:
                return {}
            return data["drives"][self.drive]
        except (OSError, ValueError, KeyError):
            return {}

    def wait_for(self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) while waiting for {what}; "
                                     f"log tail:\n{self.tail()}")
            st = self.status()
            if st and check(st):
                return st
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; last status {st}; log tail:\n{self.tail()}\n"
                             f"kernel messages:\n{kernel_tail()}")

    def wait_online(self, volumes: int | None = None, timeout: float = 120) -> dict[str, Any]:
        def ok(st: dict[str, Any]) -> bool:
            return st.get("phase") == "online" and st.get("action") == "Idle" and \
                (volumes is None or len(st.get("volumes", [])) == volumes) and \
                all(v.get("member") for v in st.get("volumes", []))
        return self.wait_for(f"online with {volumes} volumes", ok, timeout)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def images(self) -> list[str]:
        return sorted(p.name for p in (self.state_dir / "volumes").glob("*.img"))

    def loops(self) -> list[str]:
        out = subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True).stdout
        devices = json.loads(out).get("loopdevices", []) if out.strip() else []
        return [d["name"] for d in devices if (d.get("back-file") or "").startswith(str(self.state_dir))]

    def mounted(self) -> bool:
        with open("/proc/self/mountinfo") as fh:
            return any(line.split()[4] == str(self.mount) for line in fh)

    def fill(self, name: str, mib: int) -> None:
        subprocess.run(["dd", "if=/dev/urandom", f"of={self.mount / name}", "bs=1M", f"count={mib}",
                        "status=none"], check=True)
        subprocess.run(["sync"], check=True)


def kernel_tail(lines: int = 25) -> str:
    """The kernel's last messages (btrfs and device-mapper say there why a resize or a move failed)."""
    out = subprocess.run(["dmesg"], capture_output=True, text=True)
    return "\n".join(out.stdout.splitlines()[-lines:]) if out.returncode == 0 else f"(dmesg: {out.stderr.strip()})"


def log_events(log_path: Path) -> list[dict[str, Any]]:
    """The daemon's JSON log lines (other lines left out)."""
    return events_in(log_path.read_text())


def events_in(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a daemon's log text (one read elsewhere, e.g. on another guest; other lines left out)."""
    out = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Preemption:
    """One pre-empted removal, from the log: seconds from the sampler asking for the stop (the sample that saw the
    drive need space while the move ran) to the move's command ending, to the next step starting, and to the first
    step that grows (Grow, CreateVolume; None when the cancelled move gave the capacity back itself)."""

    stopped: float
    next_step: float
    next_action: str
    grow: float | None

    def describe(self) -> str:
        grow = "" if self.grow is None else f", → Grow/CreateVolume starting {self.grow:.2f} s"
        return (f"trigger → move stopped {self.stopped:.2f} s, → next step {self.next_step:.2f} s "
                f"({self.next_action}){grow}")


def preemption_waits(log_path: Path) -> list[Preemption]:
    events = log_events(log_path)
    found = []
    for i, e in enumerate(events):
        if e.get("event") != "removal pre-empted: the drive needs space; stopping the move":
            continue
        asked = _seconds(e["timestamp"])
        later = events[i:]
        stopped = next((x for x in later if x.get("event") == "removal pre-empted: move stopped"), None)
        step = next((x for x in later if x.get("event") == "step"), None)
        grow = next((x for x in later if x.get("event") == "step" and x.get("action") in ("Grow", "CreateVolume")),
                    None)
        if stopped is None or step is None:
            continue
        found.append(Preemption(round(_seconds(stopped["timestamp"]) - asked, 2),
                                round(_seconds(step["timestamp"]) - asked, 2), f"{step['action']}: {step['reason']}",
                                None if grow is None else round(_seconds(grow["timestamp"]) - asked, 2)))
    return found
