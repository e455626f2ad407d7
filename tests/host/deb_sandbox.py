"""Installs, reinstalls, removes and purges a bsud .deb in a throwaway copy of this machine's root, and reports.

Run as root in a mount namespace of its own (``unshare --mount --propagation private python deb_sandbox.py DEB``):
an overlay whose lower layer is ``/`` and whose upper layer is a tmpfs, chrooted into, with fresh /run and /tmp, so
this machine's own root and dpkg database are never written (the overlay's upper layer shows exactly what the
package wrote). There is no systemd as PID 1 in there: the scripts' systemd branches are skipped, as on a machine
without systemd; deb-systemd-helper's bookkeeping runs all the same. Prints one JSON document on stdout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ENABLE_LINK = "/etc/systemd/system/multi-user.target.wants/bsud.service"
DSH_STATE = "/var/lib/systemd/deb-systemd-helper-enabled"
VOLUME = "/var/lib/bsud/local/vol-sandbox.img"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=300)


def main(deb: str) -> int:
    base = Path(tempfile.mkdtemp(prefix="bsud-deb-sandbox."))
    try:
        run("mount", "-t", "tmpfs", "tmpfs", str(base))
        print(json.dumps(sandboxed(deb, base)))
    finally:
        run("umount", "--recursive", "--lazy", str(base), check=False)
        base.rmdir()
    return 0


def sandboxed(deb: str, base: Path) -> dict:
    for sub in ("upper", "work", "merged"):
        (base / sub).mkdir()
    root = base / "merged"
    run("mount", "-t", "overlay", "overlay", "-o",
        f"lowerdir=/,upperdir={base / 'upper'},workdir={base / 'work'}", str(root))
    run("mount", "-t", "proc", "proc", str(root / "proc"))
    run("mount", "--rbind", "/dev", str(root / "dev"))
    run("mount", "-t", "tmpfs", "tmpfs", str(root / "run"))
    run("mount", "-t", "tmpfs", "tmpfs", str(root / "tmp"))
    shutil.copy(deb, root / "tmp" / "bsud.deb")

    def inside(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("chroot", str(root), *argv, check=check)

    def exists(path: str) -> bool:
        return (root / path.lstrip("/")).exists() or (root / path.lstrip("/")).is_symlink()

    report: dict = {}
    installed = inside("dpkg", "-i", "/tmp/bsud.deb", check=False)
    report["install"] = {"rc": installed.returncode, "stderr": installed.stderr[-2000:]}
    if installed.returncode:
        return report
    listing = [p for p in inside("dpkg", "-L", "bsud").stdout.splitlines() if p.startswith("/")]
    report["listing"] = listing
    report["version"] = inside("bsud", "--version", check=False).stdout.strip()
    report["compiled"] = sorted(str(p.relative_to(root)) for p in (root / "opt/bsud/lib/bsud").glob("__pycache__"))
    report["config_mode"] = oct((root / "etc/osc/bsud.json").stat().st_mode & 0o777)
    report["enabled_at_install"] = exists(ENABLE_LINK)
    state = root / DSH_STATE.lstrip("/") / "bsud.service.dsh-also"
    report["dsh_state"] = state.read_text().split() if state.exists() else None

    # What the operator and the daemon add: the unit enabled (systemctl enable), the daemon's status file and lock,
    # a local-provider volume, byte-code written by a run.
    link = root / ENABLE_LINK.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("/lib/systemd/system/bsud.service")
    (root / "run/bsud").mkdir()
    (root / "run/bsud/status.json").write_text("{}")
    (root / "run/bsud/status.json.lock").write_text("1\n")
    volume = root / VOLUME.lstrip("/")
    volume.parent.mkdir(parents=True)
    volume.write_bytes(b"\0" * 4096)

    again = inside("dpkg", "-i", "/tmp/bsud.deb", check=False)  # an upgrade to the same version
    report["reinstall"] = {"rc": again.returncode, "stderr": again.stderr[-2000:],
                           "enabled_kept": exists(ENABLE_LINK),
                           "compiled": (root / "opt/bsud/lib/bsud/__pycache__").is_dir()}
    (root / "opt/bsud/lib/bsud/cloud/__pycache__").mkdir(exist_ok=True)
    (root / "opt/bsud/lib/bsud/cloud/__pycache__/late.cpython-311.pyc").write_bytes(b"")

    removed = inside("dpkg", "--remove", "bsud", check=False)
    report["remove"] = {"rc": removed.returncode, "stderr": removed.stderr[-2000:],
                        "opt_left": exists("/opt/bsud"), "config_kept": exists("/etc/osc/bsud.json"),
                        "volume_kept": exists(VOLUME)}
    purged = inside("dpkg", "--purge", "bsud", check=False)
    report["purge"] = {"rc": purged.returncode, "stderr": purged.stderr[-2000:]}

    # Whatever of the package is left: its files and directories that this machine's own root does not have (it
    # has /opt, /usr/share/doc…), and anything named bsud in the upper layer (what was written).
    report["left"] = [p for p in listing if exists(p) and not Path(p).exists()]
    upper = base / "upper"
    report["upper_bsud"] = sorted(
        "/" + str(p.relative_to(upper)) for p in upper.rglob("*")
        if "bsud" in p.name and not str(p.relative_to(upper)).startswith(("var/log/", "var/lib/dpkg/")))
    report["run_bsud_left"] = exists("/run/bsud")
    report["enable_link_left"] = exists(ENABLE_LINK)
    report["dsh_left"] = sorted(str(p.relative_to(root)) for p in (root / "var/lib/systemd").glob("deb-systemd-*/**/*")
                                if "bsud" in p.name)
    report["etc_osc_left"] = exists("/etc/osc")
    report["opt_exists"] = exists("/opt")
    report["volume_kept"] = exists(VOLUME)

    # Once the volume is gone (deleted by bsud, not by the package), a purge removes the empty /var/lib/bsud.
    volume.unlink()
    inside("dpkg", "-i", "/tmp/bsud.deb")
    inside("dpkg", "--purge", "bsud")
    report["empty_state_dir_left"] = exists("/var/lib/bsud")
    return report


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
