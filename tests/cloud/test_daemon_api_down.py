"""The EC2 API down for a while under a running daemon: it keeps running, its status shows the error, and it
recovers by itself when the API answers again (moto's server stopped and started again on the same port)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from ..host.daemon_harness import DaemonHarness
from .conftest import REGION, ZONE

pytestmark = pytest.mark.cloud


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_api_outage_is_reported_and_survived(tmp_path: Path, aws_env):
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    h = DaemonHarness(tmp_path, drive="outage", target="offline", cloud={
        "provider": "ec2", "endpoint": f"http://127.0.0.1:{port}", "region": REGION, "instance-id": "i-0123456789",
        "availability-zone": ZONE, "max-attempts": 2}, extra={"authentication": {"access-key": "testing",
                                                                                   "secret-key": "testing"}})
    doc = json.loads(h.config_path.read_text())
    doc["daemon"]["cloud-refresh-seconds"] = 1
    h.config_path.write_text(json.dumps(doc))
    try:
        h.start()
        h.wait_for("offline", lambda s: s.get("phase") == "offline" and s.get("last_error") is None, timeout=60)
        server.stop()
        st = h.wait_for("the outage in the status", lambda s: bool(s.get("last_error")), timeout=60)
        assert "DescribeVolumes" in st["last_error"] or "connect" in st["last_error"].lower()
        time.sleep(10)  # an outage of a while: the daemon keeps running, backing off
        assert h.alive()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        h.wait_for("recovered", lambda s: s.get("phase") == "offline" and s.get("last_error") is None,
                   timeout=120)
        assert h.stop() == 0
    finally:
        if h.alive():
            h.proc.kill()
            h.proc.wait()
        server.stop()
