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
import subprocess
import sys

from bsud.runner import Runner, python_module


def isolated(runner: Runner, devices: list[str], commands: list[list[str]]) -> str:
    """Run ``commands`` (argument lists) where /dev holds only ``devices``; what they printed. A failure raises the
    runner's CommandError (with what the command said)."""
    spec = json.dumps({"devices": [os.path.realpath(d) for d in devices], "commands": commands})
    return runner.run(["unshare", "--mount", "--propagation", "private", "--",
                       *python_module("bsud.backup.isolate", spec)], timeout=600).stdout


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    nodes = [(path, os.stat(path).st_rdev) for path in spec["devices"]]
    for path, rdev in nodes:
        if not path.startswith("/dev/"):
            sys.stderr.write(f"{path} is not under /dev\n")
            return 2
    # The new /dev is built aside and moved over the old one; its nodes are bind mounts of the host's (no mknod:
    # the service has no CAP_MKNOD, and its device policy allows opening block devices, not making them).
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "bsud-isolated", "/run"], check=True)
    staging = "/run/bsud-dev"
    os.mkdir(staging)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "bsud-isolated-dev", staging], check=True)
    for path in ["/dev/null", *(p for p, _ in nodes)]:
        target = staging + path[len("/dev"):]
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w"):
            pass
        subprocess.run(["mount", "--bind", path, target], check=True)
    subprocess.run(["mount", "--move", staging, "/dev"], check=True)
    for path, rdev in nodes:
        if os.stat(path).st_rdev != rdev:
            sys.stderr.write(f"{path} is not the device it was\n")
            return 2
    for argv_ in spec["commands"]:
        done = subprocess.run(argv_, capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
