"""``python -m bsud.backup.isolate '<json>'``: commands run where the only block devices are the given ones.

Run as ``unshare --mount --propagation private -- python -m bsud.backup.isolate …`` (see :func:`isolated`): in that
new mount namespace, /run becomes an empty tmpfs (no blkid cache) and /dev a tmpfs holding only /dev/null and the
given devices (the same device numbers). Why: a snapshot set's volumes carry a copy of a drive's btrfs, same fsid,
same device ids — and the drive itself may be mounted on this very VM. ``btrfstune`` and ``btrfs filesystem
label`` on an unmounted multi-device btrfs look for its other members on every block device of the machine; here
they can find only the copy's. Nothing of this namespace reaches the host (private propagation).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from bsud.runner import Runner


def isolated(runner: Runner, devices: list[str], commands: list[list[str]]) -> str:
    """Run ``commands`` (argument lists) where /dev holds only ``devices``; what they printed. A failure raises the
    runner's CommandError (with what the command said)."""
    spec = json.dumps({"devices": [os.path.realpath(d) for d in devices], "commands": commands})
    return runner.run(["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m", "bsud.backup.isolate",
                spec], timeout=600).stdout


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    nodes = [(path, os.stat(path).st_rdev) for path in spec["devices"]]
    for path, rdev in nodes:
        if not path.startswith("/dev/"):
            sys.stderr.write(f"{path} is not under /dev\n")
            return 2
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "bsud-isolated", "/run"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "bsud-isolated", "/dev"], check=True)
    os.mknod("/dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    for path, rdev in nodes:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mknod(path, 0o600 | stat.S_IFBLK, rdev)
    for argv_ in spec["commands"]:
        done = subprocess.run(argv_, capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
