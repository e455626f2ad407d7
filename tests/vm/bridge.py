"""Guest side of the hypervisor bridge: moto's EC2 server whose attach/detach really plug disks.

A WSGI middleware in front of moto's app watches AttachVolume, DetachVolume and
DeleteVolume. When moto accepts one, it asks the host (scripts/vmtest.py) over the
``bsud.bridge`` virtio-serial port to hot-plug or unplug the volume's disk with the
identity of the chosen cloud flavour, before answering bsud. bsud's production EC2
provider talks to this endpoint unchanged.

Snapshots hold data too (moto keeps only their metadata): CreateSnapshot has the host copy the volume's disk at
the call, CreateVolume with a SnapshotId copies the snapshot into the new volume's disk, DeleteSnapshot removes the
copy. ``fail_snapshots`` (volume ids) makes CreateSnapshot of those volumes fail as the cloud's would (an
``IncorrectState`` error, moto not asked): an incomplete snapshot set, for real.

In a pair of guests (scripts/vmtest.py's ``Pair``: ``BSUD_VM_NODE=a``) the one moto serves both: it listens on
a's network address too (``endpoint_for_peer``), and a volume attached to an instance registered in ``nodes``
(b's) is plugged into that guest (``"node": "b"``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

# moto reads its images when ec2 is first imported: one image instead of its ~1,300 defaults, whose listing
# (DescribeImages, each test's setup) took ~20 s under TCG and their loading ~20 s more per guest.
os.environ.setdefault("MOTO_AMIS_PATH", str(Path(__file__).with_name("data") / "amis.json"))

from moto.backends import get_backend  # noqa: E402 - after MOTO_AMIS_PATH
from moto.core import DEFAULT_ACCOUNT_ID  # noqa: E402
from moto.server import DomainDispatcherApplication, create_backend_app  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.WARNING)

FLAVOURS = ("virtio", "outscale", "aws")


def _port_device(name: str = "bsud.bridge") -> str:
    for entry in Path("/sys/class/virtio-ports").iterdir():
        if (entry / "name").read_text().strip() == name:
            return f"/dev/{entry.name}"
    raise RuntimeError(f"no virtio-serial port named {name} (not inside scripts/vm-test?)")


class HostChannel:
    """JSON-line requests to the host, one at a time."""

    def __init__(self) -> None:
        self.path = _port_device()
        self.lock = threading.Lock()
        self.counter = 0
        self.stream = open(self.path, "r+b", buffering=0)  # noqa: SIM115 - lives as long as the bridge

    def request(self, **req: Any) -> dict[str, Any]:
        with self.lock:
            self.counter += 1
            req["id"] = self.counter
            self.stream.write((json.dumps(req) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = self.stream.read(4096)
                if chunk:
                    buf += chunk
            reply = json.loads(buf.decode().strip().splitlines()[-1])
        if not reply.get("ok"):
            raise RuntimeError(f"host refused {req}: {reply.get('error')}")
        return reply


class BridgedMoto:
    """moto's EC2 API on loopback, with disk hot-plug on attach/detach. ``flavour`` may change per test."""

    def __init__(self, flavour: str = "virtio") -> None:
        self.flavour = flavour
        self.host = HostChannel()
        self.app = DomainDispatcherApplication(create_backend_app)
        paired = os.environ.get("BSUD_VM_NODE") == "a"
        self.server = make_server("0.0.0.0" if paired else "127.0.0.1", 0, self, threaded=True)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        #: The endpoint as the pair's other guest reaches it (None for a guest alone).
        self.endpoint_for_peer = f"http://{os.environ['BSUD_VM_IP']}:{self.server.server_port}" if paired else None
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        #: volume id → the guest it is plugged into
        self.plugged: dict[str, str] = {}
        #: The instance standing for this VM: a volume attached to another one is not plugged here…
        self.instance_id: str | None = None
        #: …unless that instance stands for the pair's other guest: instance id → node (``"b"``).
        self.nodes: dict[str, str] = {}
        #: Volumes whose CreateSnapshot fails (see the module's doc).
        self.fail_snapshots: set[str] = set()

    def node_of(self, instance_id: str | None) -> str | None:
        """The guest a volume attached to ``instance_id`` is plugged into: ``"a"`` (this one), another node of the
        pair, or None (a moto-only instance: nothing to plug)."""
        if instance_id in self.nodes:
            return self.nodes[instance_id]
        if self.instance_id in (None, instance_id):
            return "a"
        return None

    def close(self) -> None:
        self.server.shutdown()

    def reset(self) -> None:
        for vol, node in list(self.plugged.items()):
            self.host.request(op="unplug", volume=vol, node=node)
            del self.plugged[vol]
        self.nodes.clear()
        self.fail_snapshots.clear()

    def _snapshot_data(self, action: str, form: dict[str, str], answer: bytes) -> None:
        """The host's copy behind a snapshot call moto accepted (see the module's doc)."""
        def field(name: str) -> str:
            m = re.search(rf"<{name}>([^<]+)</{name}>".encode(), answer)
            return m.group(1).decode() if m else ""
        if action == "CreateSnapshot":
            self.host.request(op="snapshot", volume=form.get("VolumeId", ""), snapshot=field("snapshotId"))
        elif action == "CreateVolume":
            self.host.request(op="restore", volume=field("volumeId"), snapshot=form["SnapshotId"])
        else:
            self.host.request(op="delete-snapshot", volume="vol-0", snapshot=form.get("SnapshotId", ""))

    @staticmethod
    def _region(environ: dict[str, Any]) -> str:
        m = re.search(r"Credential=[^/]+/\d+/([^/]+)/ec2/", environ.get("HTTP_AUTHORIZATION", ""))
        return m.group(1) if m else "us-east-1"

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
        action = form.get("Action")
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
            captured["status"], captured["headers"] = status, headers
            return lambda _data: None

        if action == "CreateSnapshot" and form.get("VolumeId") in self.fail_snapshots:
            error = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>IncorrectState"
                     f"</Code><Message>snapshot of {form['VolumeId']} refused (tests: fail_snapshots)</Message>"
                     "</Error></Errors><RequestID>bridge</RequestID></Response>").encode()
            start_response("400 Bad Request", [("Content-Type", "text/xml"), ("Content-Length", str(len(error)))])
            return [error]
        chunks = b"".join(self.app(environ, capture))
        if captured["status"].startswith("200") and (action in ("CreateSnapshot", "DeleteSnapshot") or (
                action == "CreateVolume" and form.get("SnapshotId"))):
            self._snapshot_data(action, form, chunks)
        if captured["status"].startswith("200") and action in ("AttachVolume", "DetachVolume", "DeleteVolume"):
            vol = form.get("VolumeId", "")
            node = self.node_of(form.get("InstanceId")) if action == "AttachVolume" else None
            if action == "AttachVolume" and node is None:
                pass  # attached to another (moto-only) instance: nothing to plug into a guest
            elif action == "AttachVolume":
                size = get_backend("ec2")[DEFAULT_ACCOUNT_ID][self._region(environ)].get_volume(vol).size
                self.host.request(op="plug", volume=vol, size_gib=size, device=form.get("Device", ""),
                                  flavour=self.flavour, node=node)
                self.plugged[vol] = node
            elif action == "DetachVolume":
                self.host.request(op="unplug", volume=vol)
                self.plugged.pop(vol, None)
            else:
                self.host.request(op="delete", volume=vol)
        start_response(captured["status"], captured["headers"])
        return [chunks]
