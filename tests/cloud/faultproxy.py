"""An HTTP proxy in front of moto's server that plays cloud faults for a daemon running as a process.

Modes (``proxy.mode``): ``pass`` forwards; ``down`` answers nothing (the connection is closed: an outage);
``hang`` holds each request unanswered until the mode changes (an endpoint that accepts but does not answer: a
cloud API down or unreachable behind a load balancer), then carries on as the new mode says;
``throttle`` answers HTTP 503 ``RequestLimitExceeded`` as a throttled EC2 endpoint does; ``attaching`` forwards
but shows every attachment as ``attaching`` (a volume stuck attaching). Loopback only.

Beside the mode, ``proxy.refuse`` answers chosen actions with an EC2 error whatever the mode (``{"AttachVolume":
(400, "AttachmentLimitExceeded", "…")}``: a VM that takes no more volumes); DryRun requests are left alone.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

def ec2_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
            f'<Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>').encode()


THROTTLED = ec2_error("RequestLimitExceeded", "Request limit exceeded.")


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.mode = "pass"
        self.refuse: dict[str, tuple[int, str, str]] = {}
        self.requests: dict[str, int] = {}
        #: Requests by API action (DryRun ones apart, as ``<Action>:DryRun``), whatever the mode…
        self.actions: dict[str, int] = {}
        #: …and the same per access key (the credential of the request's signature).
        self.by_key: dict[str, dict[str, int]] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests[proxy.mode] = proxy.requests.get(proxy.mode, 0) + 1
                form = parse_qs(body.decode(errors="replace"))
                action = form.get("Action", ["?"])[0] + (":DryRun" if form.get("DryRun") == ["true"] else "")
                proxy.actions[action] = proxy.actions.get(action, 0) + 1
                key = self.headers.get("Authorization", "").partition("Credential=")[2].split("/", 1)[0]
                mine = proxy.by_key.setdefault(key, {})
                mine[action] = mine.get(action, 0) + 1
                if action in proxy.refuse:
                    status, code, message = proxy.refuse[action]
                    self._answer(status, ec2_error(code, message), "text/xml")
                    return
                while proxy.mode == "hang":
                    time.sleep(0.2)
                if proxy.mode == "down":
                    self.close_connection = True
                    self.connection.close()
                    return
                if proxy.mode == "throttle":
                    self._answer(503, THROTTLED, "text/xml")
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                conn.request("POST", self.path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                if proxy.mode == "attaching":
                    data = data.replace(b"<status>attached</status>", b"<status>attaching</status>")
                self._answer(reply.status, data, reply.getheader("Content-Type") or "text/xml")
                conn.close()

            def _answer(self, status: int, data: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
