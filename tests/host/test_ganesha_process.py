"""The managed nfs-ganesha's supervisor with real processes standing in for ganesha.nfsd (the real one runs in the
VM lane, tests/vm/test_ganesha.py): restarts with backoff, a hung process replaced, adoption, stop, prerequisites."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bsud.exports.ganesha import GaneshaSettings
from bsud.exports.ganesha_process import ManagedGanesha, alive, rpcbind_running
from bsud.metrics import Metrics
from bsud.sinks import DaemonReport


def wait_until(what: str, check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def settings(tmp_path: Path, **changes) -> GaneshaSettings:
    return GaneshaSettings(managed=True, log_file=str(tmp_path / "log" / "ganesha.log"),
                           pid_file=str(tmp_path / "run" / "ganesha.pid"), **changes)


class Beats:
    """ganesha's heartbeat as the listener sees it: the time of the last one, while ``beating``."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.beating = True
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.done.wait(0.2):
            if self.beating:
                self.last = time.monotonic()


def test_a_process_that_keeps_exiting_is_started_again_with_growing_waits(tmp_path: Path):
    starts = tmp_path / "starts"
    argv = [sys.executable, "-c", f"import time; open({str(starts)!r}, 'a').write(f'{{time.monotonic()}}\\n'); "
                                  "raise SystemExit(3)"]
    m = ManagedGanesha(settings(tmp_path, restart_backoff_max_seconds=2), lambda: None, argv=argv,
                       prerequisites=lambda: None, owner_pid=lambda: None)
    m.start()
    try:
        wait_until("four starts", lambda: starts.exists() and len(starts.read_text().split()) >= 4)
        assert "exited with code 3" in m.state and m.restarts >= 3
    finally:
        m.stop()
    times = [float(t) for t in starts.read_text().split()]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # 1 s, then 2 s (the maximum here), and again 2 s: a process that fails at once is not restarted in a loop
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0 and gaps[2] >= 2.0, gaps
    assert (tmp_path / "log").is_dir() and (tmp_path / "run").is_dir()  # made for ganesha's -L and -p


def test_a_process_whose_heartbeat_stops_is_replaced_and_the_drives_are_told_when_the_new_one_is_up(tmp_path: Path):
    beats, ups = Beats(), []
    m = ManagedGanesha(settings(tmp_path, heartbeat_timeout_seconds=1), lambda: beats.last,
                       argv=["sleep", "1000"], prerequisites=lambda: None, owner_pid=lambda: None,
                       on_up=lambda: ups.append(time.monotonic()))
    m.start()
    try:
        wait_until("up", lambda: ups)
        first = m.pid
        assert first is not None and alive(first) and m.state == f"running, pid {first}"
        os.kill(first, signal.SIGSTOP)  # hung as a stopped process is: SIGTERM alone would not end it
        beats.beating = False
        wait_until("replaced", lambda: m.pid not in (None, first), timeout=30)
        assert not alive(first) and m.restarts == 1
        beats.beating = True
        wait_until("the new one up", lambda: len(ups) == 2)
        # What an operator's scrape shows of it: one restart, running again.
        metrics = Metrics()
        metrics.publish(DaemonReport(version="t", pid=1, config="c", started=0, updated=0, drives={}, unmanaged={},
                                     ganesha=m.status()))
        got = {s.name: s.value for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
               for s in f.samples}
        assert (got["bsud_ganesha_restarts_total"], got["bsud_ganesha_running"]) == (1, 1)
    finally:
        m.stop()
        beats.done.set()
    assert not alive(first)


def test_stopping_stops_the_process_and_a_running_ganesha_is_adopted_not_doubled(tmp_path: Path):
    beats = Beats()
    running = subprocess.Popen(["sleep", "1000"])  # the ganesha an earlier bsud started (it was killed with -9)
    owner = {"pid": running.pid}
    spawned = tmp_path / "spawned"
    m = ManagedGanesha(settings(tmp_path), lambda: beats.last, argv=["sh", "-c", f"touch {spawned}; exec sleep 1000"],
                       prerequisites=lambda: None, owner_pid=lambda: owner["pid"])
    m.start()
    try:
        wait_until("adopted and up", lambda: m.state == f"running, pid {running.pid}")
        assert not spawned.exists()
        owner["pid"] = None  # it exits (and leaves the bus): one of bsud's own is started
        running.kill()
        running.wait()
        wait_until("started", lambda: spawned.exists() and m.pid not in (None, running.pid))
        own = m.pid
    finally:
        m.stop()
        beats.done.set()
    assert own is not None and not alive(own) and m.state == "stopped"


def test_nothing_is_started_while_the_bus_or_rpcbind_is_missing_and_the_status_says_what_to_start(tmp_path: Path):
    spawned = tmp_path / "spawned"
    missing = ["rpcbind is not running (ganesha registers NFS and MOUNT there); start it (package rpcbind)"]
    m = ManagedGanesha(settings(tmp_path), lambda: None, argv=["touch", str(spawned)],
                       prerequisites=lambda: missing[0] if missing else None, owner_pid=lambda: None)
    m.start()
    try:
        wait_until("waiting", lambda: m.state.startswith("waiting:"))
        time.sleep(0.5)
        assert m.state == f"waiting: {missing[0]}" and not spawned.exists()
        missing.clear()
        wait_until("started once it is there", spawned.exists, timeout=15)
    finally:
        m.stop()


def test_rpcbind_is_found_on_its_socket_or_its_port(tmp_path: Path):
    path = str(tmp_path / "rpcbind.sock")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert not rpcbind_running(path, port=free)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen()
        assert rpcbind_running(path, port=free)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert rpcbind_running(str(tmp_path / "none.sock"), port=server.getsockname()[1])
