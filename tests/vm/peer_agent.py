"""The second guest's hands, for the VM lane's two-guest case (scripts/vmtest.py's ``PAIR_FILES``).

Guest ``b`` of a pair runs no pytest: tests/vm/guest-init.sh starts this agent instead, listening on b's address
(10.99.1.2, port :data:`PORT`). Guest ``a``'s tests drive it with :class:`PeerClient`: JSON lines over TCP, one
request and one reply per line. Test-only: it runs whatever it is asked, as root, on a throwaway guest joined to
nothing but the other guest.

Requests (commands are argument lists, never a shell):

- ``{"op": "run", "argv": [...], "timeout": S, "input": TEXT}`` → ``{"rc", "stdout", "stderr"}``; past the timeout
  the process group is killed and the reply is an error;
- ``{"op": "spawn", "argv": [...]}`` → ``{"child", "pid", "log"}`` (stdout and stderr to the log file, a session
  of its own); ``{"op": "poll", "child": N}`` → ``{"rc": null | int}``; ``{"op": "kill", "child": N, "signal": SIG}``
  signals its process group;
- ``{"op": "read", "path": P}`` → ``{"data": BASE64}``; ``{"op": "write", "path": P, "data": BASE64, "mode": M}``;
- ``{"op": "poweroff"}``: the agent answers and exits; guest-init powers the guest off.

A request may carry an ``"id"``, which its reply repeats. Every reply has ``"ok"``; a failed request has ``"error"`` (a readable sentence).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PORT = 7000
LOG_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / "peer-agent"


class Agent:
    """What the requests do; one instance for all connections."""

    def __init__(self) -> None:
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "run":
            argv = _argv(req)
            timeout = float(req.get("timeout", 120))
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
            try:
                out, err = proc.communicate(str(req.get("input", "")).encode(), timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                return {"ok": False, "error": f"{argv} did not finish within {timeout:g} s (killed)",
                        "stdout": out.decode(errors="replace"), "stderr": err.decode(errors="replace")}
            return {"ok": True, "rc": proc.returncode, "stdout": out.decode(errors="replace"),
                    "stderr": err.decode(errors="replace")}
        if op == "spawn":
            argv = _argv(req)
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            with self.lock:
                ident = len(self.children) + 1
                log = LOG_DIR / f"{ident}.log"
                with open(log, "wb") as fh:
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                            start_new_session=True)
                self.children[ident] = proc
            return {"ok": True, "child": ident, "pid": proc.pid, "log": str(log)}
        if op in ("poll", "kill"):
            proc = self.children.get(int(req.get("child", 0)))
            if proc is None:
                return {"ok": False, "error": f"no spawned process {req.get('child')!r}"}
            if op == "kill" and proc.poll() is None:
                os.killpg(proc.pid, int(req.get("signal", signal.SIGTERM)))
            return {"ok": True, "rc": proc.poll()}
        if op == "read":
            return {"ok": True, "data": base64.b64encode(Path(str(req["path"])).read_bytes()).decode()}
        if op == "write":
            path = Path(str(req["path"]))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(str(req.get("data", ""))))
            if "mode" in req:
                path.chmod(int(req["mode"]))
            return {"ok": True}
        if op == "ping":
            return {"ok": True, "node": os.uname().nodename}
        if op == "poweroff":
            self.stop.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}


def _argv(req: dict[str, Any]) -> list[str]:
    argv = req.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
    return argv


def serve(address: str, port: int = PORT) -> int:
    agent = Agent()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                if not line.strip():
                    continue
                try:
                    req = json.loads(line)
                    reply = agent.handle(req)
                except Exception as exc:  # noqa: BLE001 - reported to the client
                    req, reply = {}, {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                reply["id"] = req.get("id") if isinstance(req, dict) else None
                self.wfile.write((json.dumps(reply) + "\n").encode())
                self.wfile.flush()

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    with socketserver.ThreadingTCPServer((address, port), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"peer-agent: listening on {address}:{port}", flush=True)
        agent.stop.wait()
        server.shutdown()
    for proc in agent.children.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print("peer-agent: asked to power off", flush=True)
    return 0


class PeerClient:
    """guest a's side: the agent's requests as methods, answers as :class:`subprocess.CompletedProcess`."""

    name = "b"

    def __init__(self, host: str, port: int = PORT, connect_timeout: float = 300) -> None:
        self.host, self.port = host, port
        deadline = time.monotonic() + connect_timeout
        while True:  # guest b boots beside a: wait for its agent
            try:
                self.sock = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"no peer agent on {host}:{port} after {connect_timeout:g} s") from None
                time.sleep(1)
        self.file = self.sock.makefile("rwb")
        self.lock = threading.Lock()
        self.counter = 0

    def request(self, req: dict[str, Any], wait: float = 60) -> dict[str, Any]:
        """Send one request, wait up to ``wait`` seconds (plus a margin) for its reply."""
        with self.lock:
            self.counter += 1
            req = {**req, "id": self.counter}
            self.sock.settimeout(wait + 30)
            self.file.write((json.dumps(req) + "\n").encode())
            self.file.flush()
            line = self.file.readline()
        if not line:
            raise ConnectionError(f"peer agent on {self.host} closed the connection (request {req})")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"peer agent: {reply.get('error')}" +
                               (f"\nstdout: {reply['stdout']}\nstderr: {reply['stderr']}" if "stdout" in reply else ""))
        return reply

    def run(self, argv: list[str], timeout: float = 120, check: bool = True,
            input: str = "") -> subprocess.CompletedProcess[str]:  # noqa: A002 - as subprocess.run
        reply = self.request({"op": "run", "argv": argv, "timeout": timeout, "input": input}, wait=timeout)
        done = subprocess.CompletedProcess(argv, reply["rc"], reply["stdout"], reply["stderr"])
        if check and done.returncode != 0:
            raise AssertionError(f"on {self.name}: {argv} exited {done.returncode}\nstdout: {done.stdout}\n"
                                 f"stderr: {done.stderr}")
        return done

    def spawn(self, argv: list[str]) -> dict[str, Any]:
        return self.request({"op": "spawn", "argv": argv})

    def poll(self, ident: int) -> int | None:
        return self.request({"op": "poll", "child": ident})["rc"]

    def kill(self, ident: int, sig: int = signal.SIGTERM) -> int | None:
        return self.request({"op": "kill", "child": ident, "signal": int(sig)})["rc"]

    def read(self, path: str | Path) -> bytes:
        return base64.b64decode(self.request({"op": "read", "path": str(path)})["data"])

    def write(self, path: str | Path, data: bytes | str, mode: int | None = None) -> None:
        raw = data.encode() if isinstance(data, str) else data
        extra = {} if mode is None else {"mode": mode}
        self.request({"op": "write", "path": str(path), "data": base64.b64encode(raw).decode(), **extra})

    def poweroff(self) -> None:
        self.request({"op": "poweroff"})

    def close(self) -> None:
        self.sock.close()


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1] if len(sys.argv) > 1 else "0.0.0.0"))
