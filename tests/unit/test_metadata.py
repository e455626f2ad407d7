"""Identity from an instance metadata service on loopback: IMDSv2 (token) and plain (Outscale)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bsud.cloud.metadata import MetadataClient, resolve_identity
from bsud.config import CloudSettings
from bsud.errors import CloudError

DATA = {"/latest/meta-data/instance-id": "i-0abc", "/latest/meta-data/placement/availability-zone": "eu-west-2a"}


def serve(require_token: bool) -> tuple[ThreadingHTTPServer, list[str]]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_PUT(self):  # noqa: N802
            seen.append("PUT " + self.path)
            if not require_token:
                self.send_error(405)
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"TOKEN123")

        def do_GET(self):  # noqa: N802
            seen.append("GET " + self.path)
            if require_token and self.headers.get("X-aws-ec2-metadata-token") != "TOKEN123":
                self.send_error(401)
                return
            body = DATA.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture(params=[True, False], ids=["imdsv2-token", "plain-get"])
def imds(request) -> Iterator[tuple[str, list[str]]]:
    server, seen = serve(require_token=request.param)
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_identity_from_metadata(imds):
    url, seen = imds
    ident = resolve_identity(CloudSettings(metadata_url=url))
    assert (ident.instance_id, ident.availability_zone, ident.region) == ("i-0abc", "eu-west-2a", "eu-west-2")
    assert seen[0] == "PUT /latest/api/token"


def test_config_overrides_skip_metadata():
    ident = resolve_identity(CloudSettings(instance_id="i-1", availability_zone="us-east-2b",
                                           metadata_url="http://127.0.0.1:9"))
    assert (ident.instance_id, ident.region) == ("i-1", "us-east-2")


def test_unreachable_metadata_says_what_to_set():
    with pytest.raises(CloudError) as info:
        MetadataClient("http://127.0.0.1:9", timeout=0.2).get("instance-id")
    assert "cloud.instance-id" in str(info.value) and info.value.temporary
