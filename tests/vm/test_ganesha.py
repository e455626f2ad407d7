"""NFS through nfs-ganesha in the test VM (dbus-daemon, rpcbind and ganesha.nfsd as a system service would run
them; bsud only talks to it over D-Bus): an NFSv4 client writes through one export while another is added and
removed, the heartbeat stops and comes back (SIGSTOP/SIGCONT), ganesha restarted is drift that bsud repairs, its
I/O counters grow with the traffic, offline removes the exports before the unmount."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import traceback
from pathlib import Path

import pytest

from bsud.exports.ganesha import Ganesha, GaneshaSettings
from bsud.exports.ganesha_config import export_id
from bsud.exports.ganesha_dbus import Bus
from bsud.exports.nfs import NfsExport
from bsud.exports.ganesha_process import alive
from bsud.runner import Runner

from ..host.daemon_harness import DaemonHarness
from .test_exports import digest, need, sh, write_through

pytestmark = pytest.mark.vm

MAIN_CONF = """\
NFS_CORE_PARAM {
    Protocols = 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    NFS_Port = 2049;
}
NFSV4 {
    Graceless = true;
    Lease_Lifetime = 10;
}
LOG {
    Default_Log_Level = EVENT;
}
"""


def export(path: str) -> dict:
    return {"kind": "nfs", "server": "ganesha", "path": path, "clients": ["127.0.0.1"],
            "options": ["rw", "no_root_squash"]}


class GaneshaProcess:
    """ganesha.nfsd in the foreground, as its system service runs it."""

    def __init__(self, workdir: Path) -> None:
        self.conf = workdir / "ganesha.conf"
        self.conf.write_text(MAIN_CONF)
        self.log = workdir / "ganesha.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["ganesha.nfsd", "-F", "-f", str(self.conf), "-L", str(self.log),
                                      "-p", "/run/ganesha-test.pid"])
        bus, deadline = Bus(), time.monotonic() + 120
        while True:  # on the bus and answering
            try:
                bus.show_exports()
                return
            except Exception:
                assert self.proc.poll() is None, f"ganesha.nfsd exited: {self.log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"ganesha not on D-Bus after 120 s: {self.log.read_text()[-2000:]}"
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def system_bus():
    """The system D-Bus and rpcbind, as the system runs them."""
    need(("ganesha.nfsd", "dbus-daemon", "rpcbind", "mount.nfs4"), "nfs-ganesha, nfs-ganesha-vfs, dbus, rpcbind, "
         "nfs-common")
    for directory in ("/run/dbus", "/run/rpcbind", "/var/lib/nfs/ganesha", "/var/run/ganesha"):
        Path(directory).mkdir(parents=True, exist_ok=True)
    if not Path("/run/dbus/system_bus_socket").exists():
        sh("dbus-daemon", "--system", "--fork")
    sh("rpcbind", "-w")
    yield
    sh("pkill", "-x", "rpcbind", check=False)


@pytest.fixture
def ganesha(system_bus, tmp_path_factory):
    """nfs-ganesha as the system's service would run it (bsud only talks to it)."""
    server = GaneshaProcess(tmp_path_factory.mktemp("ganesha"))
    server.start()
    yield server
    server.stop()


def mount_nfs4(source: str, target: Path) -> None:
    target.mkdir(exist_ok=True)
    sh("mount", "-t", "nfs4", "-o", "vers=4.1,hard,timeo=100", f"127.0.0.1:{source}", str(target), timeout=180)


def servers(status: dict) -> str:
    return " ".join((status.get("exports") or {}).get("servers") or [])


def test_exports_through_nfs_ganesha_over_dbus(ganesha, tmp_path: Path, capsys):
    exports_dir = tmp_path / "ganesha.d"
    h = DaemonHarness(tmp_path, drive="gsh", exports=[export("a"), export("b")],
                      extra={"nfs": {"ganesha": {"exports-dir": str(exports_dir), "heartbeat-timeout-seconds": 3}}})
    kind = Ganesha(Runner(), GaneshaSettings(exports_dir=str(exports_dir)))
    id_a, id_b = export_id("gsh", "a"), export_id("gsh", "b")
    a, b = tmp_path / "client-a", tmp_path / "client-b"
    in_sync = lambda s: (s.get("exports") or {}).get("in_sync") is True  # noqa: E731
    try:
        h.start()
        h.wait_for("exported", lambda s: s.get("phase") == "online" and in_sync(s), timeout=300)
        served = kind.bus.show_exports()
        assert served[id_a] == str(h.mount / "a") and served[id_b] == str(h.mount / "b")
        h.wait_for("ready", lambda s: "nfs-ganesha: ready" in servers(s), timeout=30)

        mount_nfs4("/bsud/gsh/a", a)
        mount_nfs4("/bsud/gsh/b", b)
        sums = {n: write_through(a, n, 512) for n in ("a0.bin", "a1.bin")}
        sums_b = {"b0.bin": write_through(b, "b0.bin", 256)}
        assert {n: digest(h.mount / "a" / n) for n in sums} == sums  # on the drive, as written by the client
        assert digest(h.mount / "b" / "b0.bin") == sums_b["b0.bin"]
        io = kind.io("gsh", [NfsExport.model_validate(export("a"))])["a"]
        assert io.write_bytes >= 1 << 20 and io.requests > 0, io

        # Export b removed while a keeps serving (a client writes through a all along); then added back.
        sh("umount", "-l", str(b))
        h.write_config(exports=[export("a")])
        h.signal(signal.SIGHUP)
        h.wait_for("b removed", lambda s: in_sync(s) and id_b not in kind.bus.show_exports(), timeout=120)
        sums["a2.bin"] = write_through(a, "a2.bin", 256)
        assert kind.bus.show_exports()[id_a] == str(h.mount / "a")
        h.write_config(exports=[export("a"), export("b")])
        h.signal(signal.SIGHUP)
        h.wait_for("b back", lambda s: in_sync(s) and id_b in kind.bus.show_exports(), timeout=120)
        mount_nfs4("/bsud/gsh/b", b)
        assert digest(b / "b0.bin") == sums_b["b0.bin"]
        after = kind.io("gsh", [NfsExport.model_validate(export("a"))])["a"]
        assert after.write_bytes > io.write_bytes, (io, after)

        # The heartbeat stops while ganesha is stopped: not ready; back when it runs again.
        assert ganesha.proc is not None
        ganesha.proc.send_signal(signal.SIGSTOP)
        h.wait_for("not ready", lambda s: "nfs-ganesha: not ready" in servers(s), timeout=60)
        ganesha.proc.send_signal(signal.SIGCONT)
        h.wait_for("ready again", lambda s: "nfs-ganesha: ready" in servers(s), timeout=60)

        # ganesha restarted forgets what came over D-Bus: drift, which bsud repairs (AddExport again).
        sh("umount", "-l", str(b))
        ganesha.stop()
        ganesha.start()
        assert id_a not in kind.bus.show_exports()
        h.wait_for("exports back", lambda s: in_sync(s) and {id_a, id_b} <= set(kind.bus.show_exports()),
                   timeout=180)
        sums["a3.bin"] = write_through(a, "a3.bin", 256)  # the client's hard mount carried on
        assert {n: digest(a / n) for n in sums} == sums

        # Offline: the exports go first (ganesha serves none of them), then the unmount.
        sh("umount", "-l", str(a))
        h.write_config(target="offline")
        h.signal(signal.SIGHUP)
        h.wait_for("offline", lambda s: s.get("phase") == "offline", timeout=180)
        assert not {id_a, id_b} & set(kind.bus.show_exports()) and not h.mounted()
        assert not (exports_dir / "gsh.conf").exists()
        with capsys.disabled():
            print(f"\nganesha: {len(sums)} files over NFSv4.1, export a wrote {after.write_bytes} B "
                  f"({after.requests} requests, {after.latency_ns / max(after.requests, 1) / 1e6:.2f} ms each)",
                  flush=True)
    except BaseException:
        if ganesha.proc is not None:
            ganesha.proc.send_signal(signal.SIGCONT)
        with capsys.disabled():
            steps = [line for line in h.log_path.read_text().splitlines() if '"step"' in line or "failed" in line]
            print("\n".join(["", traceback.format_exc(), "bsud status:", json.dumps(h.status())[:3000],
                             "bsud steps:", *steps[-25:], "ganesha log:",
                             *(ganesha.log.read_text().splitlines()[-30:] if ganesha.log.exists() else [])]),
                  flush=True)
        raise
    finally:
        for point in (a, b):
            sh("umount", "-f", "-l", str(point), check=False)
        h.close()


def ganesha_pid(status: dict) -> int | None:
    """The managed process's pid as the status says it ("… managed: running, pid 123 …")."""
    m = re.search(r"managed: running, pid (\d+)", servers(status))
    return int(m.group(1)) if m else None


def test_managed_ganesha_is_started_restarted_when_killed_or_hung_and_stopped_with_bsud(system_bus, tmp_path: Path,
                                                                                      capsys):
    """``nfs.ganesha.managed``: bsud runs ganesha.nfsd itself. kill -9 and SIGSTOP (no heartbeat) each get a new
    process with the exports added back while a client's hard mount carries on; the per-client counters grow;
    stopping bsud stops it."""
    conf = tmp_path / "ganesha.conf"
    conf.write_text(MAIN_CONF)
    log_file = tmp_path / "ganesha.log"
    settings = {"managed": True, "config-file": str(conf), "log-file": str(log_file),
                "pid-file": "/run/ganesha-managed.pid", "exports-dir": str(tmp_path / "ganesha.d"),
                "heartbeat-timeout-seconds": 3}
    h = DaemonHarness(tmp_path, drive="gsm", exports=[export("a")], extra={"nfs": {"ganesha": settings}})
    id_a, client = export_id("gsm", "a"), tmp_path / "client"
    bus = Bus()
    in_sync = lambda s: (s.get("exports") or {}).get("in_sync") is True  # noqa: E731
    pids: list[int] = []

    def new_process(what: str) -> None:
        st = h.wait_for(what, lambda s: in_sync(s) and ganesha_pid(s) not in (None, *pids)
                        and id_a in bus.show_exports(), timeout=300)
        pids.append(ganesha_pid(st))

    try:
        h.start()
        new_process("ganesha started by bsud, the export added")
        mount_nfs4("/bsud/gsm/a", client)
        sums = {"m0.bin": write_through(client, "m0.bin", 512)}
        st = h.wait_for("client counters", lambda s: any(
            c.get("write_bytes", 0) >= 512 << 10 for c in ((s.get("exports") or {}).get("clients") or {}).values()),
            timeout=120)
        counted = st["exports"]["clients"]

        os.kill(pids[-1], signal.SIGKILL)
        new_process("restarted after kill -9")
        assert "1 restart" in servers(h.status())
        sums["m1.bin"] = write_through(client, "m1.bin", 256)  # the hard mount carried on

        os.kill(pids[-1], signal.SIGSTOP)  # alive but silent: no heartbeat for 3 s
        new_process("replaced after its heartbeat stopped")
        assert not alive(pids[-2])
        sums["m2.bin"] = write_through(client, "m2.bin", 256)
        assert {n: digest(client / n) for n in sums} == sums
        assert {n: digest(h.mount / "a" / n) for n in sums} == sums

        sh("umount", "-f", "-l", str(client))
        assert h.stop() == 0
        assert not alive(pids[-1]), "bsud stopped and left its ganesha running"
        with capsys.disabled():
            print(f"\nmanaged ganesha: pids {pids} (killed -9, then stopped by SIGSTOP), {len(sums)} files intact; "
                  f"clients counted {counted}", flush=True)
    except BaseException:
        with capsys.disabled():
            lines = [line for line in h.log_path.read_text().splitlines() if "ganesha" in line or '"step"' in line]
            print("\n".join(["", traceback.format_exc(), "bsud status:", json.dumps(h.status())[:3000],
                             "bsud log:", *lines[-30:], "ganesha log:",
                             *(log_file.read_text().splitlines()[-30:] if log_file.exists() else [])]), flush=True)
        raise
    finally:
        sh("umount", "-f", "-l", str(client), check=False)
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        h.close()
