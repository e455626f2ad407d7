"""tests/vm/peer_agent.py, the pair's second guest's agent, on loopback: argv lists run with a timeout, background
processes spawned and signalled, files read and written, errors as readable replies."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.vm.peer_agent import PeerClient, serve


@pytest.fixture
def client():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    thread = threading.Thread(target=serve, args=("127.0.0.1", port), daemon=True)
    thread.start()
    peer = PeerClient("127.0.0.1", port, connect_timeout=10)
    yield peer
    peer.poweroff()
    thread.join(10)
    assert not thread.is_alive()
    peer.close()


def test_the_agent_runs_argv_lists_spawns_signals_and_moves_files(client, tmp_path: Path):
    done = client.run(["sh", "-c", "cat; echo err >&2; exit 3"], input="in", check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "in", "err\n")
    with pytest.raises(AssertionError, match="exited 3"):
        client.run(["sh", "-c", "exit 3"])
    with pytest.raises(RuntimeError, match="did not finish within 0.5 s"):
        client.run(["sleep", "5"], timeout=0.5)
    with pytest.raises(RuntimeError, match="argv must be a non-empty list"):
        client.request({"op": "run", "argv": "echo hi"})
    child = client.spawn(["sleep", "30"])
    assert client.poll(child["child"]) is None
    client.kill(child["child"], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while client.poll(child["child"]) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.poll(child["child"]) == -signal.SIGTERM
    client.write(tmp_path / "d" / "f", b"\x00\xffdata", mode=0o600)
    assert (tmp_path / "d" / "f").stat().st_mode & 0o777 == 0o600
    assert client.read(tmp_path / "d" / "f") == b"\x00\xffdata"
    with pytest.raises(RuntimeError, match="unknown op"):
        client.request({"op": "format-disk"})
