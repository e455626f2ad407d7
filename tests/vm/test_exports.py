"""A drive shared over NFS (the kernel server in the test VM, a real NFSv3 client on loopback): the export applied
once mounted, files written and read back through the client, scale-up and scale-down while the client writes,
drift repaired, a config the server cannot apply rolled back while the old export keeps serving, and offline
(the export withdrawn first, the unmount succeeds). Local provider, btrfs layout: what is tested is the export."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ..host.daemon_harness import DaemonHarness

pytestmark = pytest.mark.vm

EXPORT = {"kind": "nfs", "clients": ["127.0.0.1"], "options": ["rw", "sync", "no_root_squash", "no_subtree_check"]}


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert not check or done.returncode == 0, f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}"
    return done


@pytest.fixture(scope="module")
def nfs_server():
    if os.environ.get("BSUD_IN_VM") != "1":
        pytest.skip("vm lane: runs inside scripts/vm-test")
    missing = [t for t in ("rpc.nfsd", "rpc.mountd", "rpcbind", "exportfs", "mount.nfs") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (packages nfs-kernel-server, nfs-common, rpcbind)")
    sh("modprobe", "nfsd")
    if not Path("/proc/fs/nfsd/threads").exists():
        sh("mount", "-t", "nfsd", "nfsd", "/proc/fs/nfsd")
    Path("/run/rpcbind").mkdir(exist_ok=True)
    sh("rpcbind", "-w")
    sh("rpc.mountd")
    sh("rpc.nfsd", "4")
    yield
    sh("rpc.nfsd", "0", check=False)
    sh("pkill", "-x", "rpc.mountd", check=False)
    sh("pkill", "-x", "rpcbind", check=False)


def exported() -> dict[str, str]:
    out = sh("exportfs", "-s").stdout
    listed: dict[str, str] = {}
    path = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            path, *rest = line.split()
            listed[path] = " ".join(rest)
        elif path:
            listed[path] += " " + line.strip()
    return listed


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_through(client: Path, name: str, mib: int) -> str:
    data = os.urandom(mib << 20)
    with open(client / name, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest()


def test_a_drive_shared_over_nfs(nfs_server, tmp_path: Path, capsys):
    h = DaemonHarness(tmp_path, exports=[EXPORT])
    client = tmp_path / "client"
    client.mkdir()
    exports_file = Path("/etc/exports.d") / f"bsud-{h.drive}.exports"
    in_sync = lambda s: (s.get("exports") or {}).get("in_sync") is True  # noqa: E731
    try:
        h.start()
        h.wait_for("exported", lambda s: s.get("phase") == "online" and in_sync(s))
        assert str(h.mount) in exported()
        # NFSv3: the guest's root is an overlay over 9p, which NFSv4's pseudo-root cannot walk through; a real
        # VM's root (ext4, xfs) can, and v4 clients mount the same export there.
        tried = sh("mount", "-t", "nfs", "-o", "vers=3,nolock,hard,timeo=100", f"127.0.0.1:{h.mount}", str(client),
                   check=False)
        if tried.returncode:
            debug = [sh(*c, check=False) for c in (["exportfs", "-v"], ["cat", "/proc/fs/nfsd/versions"],
                                                    ["cat", "/proc/net/rpc/nfsd.export/content"],
                                                    ["rpcinfo", "-p"], ["dmesg"])]
            raise AssertionError(f"mount failed: {tried.stderr}\n" + "\n".join(d.stdout[-1500:] + d.stderr
                                                                            for d in debug))

        # Through the client: written, read back on the server's side and through the client.
        sums = {f"c{n}.bin": write_through(client, f"c{n}.bin", 64) for n in range(3)}
        assert {n: digest(h.mount / n) for n in sums} == sums == {n: digest(client / n) for n in sums}

        # Scale up while the client writes: 1 GiB drive, 600 MiB more through NFS.
        for n in range(3, 13):
            sums[f"c{n}.bin"] = write_through(client, f"c{n}.bin", 60)
        h.wait_online(volumes=2, timeout=300)
        assert {n: digest(client / n) for n in sums} == sums, "data read through the client changed"

        # Scale down while the client keeps writing small files.
        for n in range(3, 13):
            (client / f"c{n}.bin").unlink()
            del sums[f"c{n}.bin"]
        for n in range(20):
            sums[f"s{n}.bin"] = write_through(client, f"s{n}.bin", 1)
        h.wait_for("scale-down to one volume", lambda s: len(s.get("volumes", [])) == 1 and in_sync(s), timeout=300)
        assert {n: digest(client / n) for n in sums} == sums

        # Drift: our file removed behind bsud's back is written again.
        exports_file.unlink()
        sh("exportfs", "-ra")
        assert str(h.mount) not in exported()
        h.wait_for("drift repaired", lambda s: exports_file.exists() and in_sync(s) and str(h.mount) in exported(),
                   timeout=120)

        # A config the server cannot apply (a client it cannot resolve): rolled back, the old export serves on.
        good = exports_file.read_text()
        h.write_config(exports=[{**EXPORT, "clients": ["127.0.0.1", "nosuchhost.invalid"]}])
        h.signal(signal.SIGHUP)
        st = h.wait_for("rolled back", lambda s: "the previous file is back" in (s.get("last_error") or ""),
                        timeout=120)
        assert "nosuchhost.invalid" in st["last_error"] and exports_file.read_text() == good
        assert digest(client / "s0.bin") == sums["s0.bin"]  # still served
        h.write_config(exports=[EXPORT])
        h.signal(signal.SIGHUP)
        h.wait_for("in sync again", lambda s: in_sync(s) and not s.get("last_error"), timeout=120)

        # Offline: the export goes first, then the unmount succeeds although the client still has it mounted.
        h.write_config(target="offline")
        h.signal(signal.SIGHUP)
        h.wait_for("offline", lambda s: s.get("phase") == "offline", timeout=180)
        assert not exports_file.exists() and str(h.mount) not in exported() and not h.mounted()
        with capsys.disabled():
            print(f"\nnfs: {len(sums)} files intact through scale-up, scale-down, drift, rollback; offline clean",
                  flush=True)
    finally:
        sh("umount", "-f", "-l", str(client), check=False)
        h.close()
