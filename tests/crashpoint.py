"""Run bsud with a kill point, for the crash tests: ``python -m tests.crashpoint [bsud args]``.

``BSUD_CRASH`` names where bsud dies by SIGKILL, the first time it gets there:

- ``after:action:<Kind>`` / ``before:action:<Kind>`` — around an action of the executor (``CreateVolume``…);
- ``after:cmd:<argv prefix>`` / ``before:cmd:<argv prefix>`` — around an external command whose argv starts with
  those words (``lvm pvcreate``, ``btrfs filesystem resize``…);
- ``during:cmd:<argv prefix>`` — ``BSUD_CRASH_DELAY`` seconds (default 0.3) into that command, which dies too;
- ``after:cloud:<method>`` — after a cloud call (``detach_volume``…) has completed.

``BSUD_CRASH_GROUP=1`` kills bsud's whole process group (its lvm/btrfs child with it), not only bsud: start it
in a session of its own. ``BSUD_CRASH_GUARDS=1`` kills its freeze guards too (children of their own session,
see bsud.backup.freeze), first: bsud and its guard gone together, as a cgroup-wide kill leaves them. Production
code knows nothing of this: the hooks are wrapped around it here.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from typing import Any, Callable

from bsud.cloud.base import CloudProvider
from bsud.reconcile.execute import Executor
from bsud.runner import Runner

WHEN, _, REST = os.environ.get("BSUD_CRASH", "").partition(":")
LAYER, _, TARGET = REST.partition(":")
GROUP = os.environ.get("BSUD_CRASH_GROUP") == "1"
DELAY = float(os.environ.get("BSUD_CRASH_DELAY", "0.3"))
GUARDS = os.environ.get("BSUD_CRASH_GUARDS") == "1"


def guards() -> list[int]:
    """This process's children that are freeze guards (``python -m bsud.backup.freeze``)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and any(b"bsud.backup.freeze" in word for word in argv):
            found.append(int(entry))
    return found


def die(where: str) -> None:
    if GUARDS:
        for pid in guards():
            os.kill(pid, signal.SIGKILL)
            print(f"crashpoint: SIGKILL the freeze guard {pid}", file=sys.stderr, flush=True)
    print(f"crashpoint: SIGKILL {'the process group' if GROUP else 'bsud'} {where}", file=sys.stderr, flush=True)
    if GROUP:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def wrap(owner: type, name: str, matches: Callable[..., bool]) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        hit = matches(*args, **kwargs)
        if hit and WHEN == "before":
            die(f"before {TARGET}")
        if hit and WHEN == "during":
            threading.Timer(DELAY, die, args=(f"during {TARGET}",)).start()
        result = original(*args, **kwargs)
        if hit and WHEN == "after":
            die(f"after {TARGET}")
        return result

    setattr(owner, name, hooked)


def install() -> None:
    if LAYER == "action":
        wrap(Executor, "run", lambda self, action, *a, **k: action.kind == TARGET)
    elif LAYER == "cmd":
        words = TARGET.split()
        wrap(Runner, "run", lambda self, argv, *a, **k: [str(x) for x in argv[:len(words)]] == words)
    elif LAYER == "cloud":
        for cls in CloudProvider.__subclasses__():
            if TARGET in cls.__dict__:
                wrap(cls, TARGET, lambda *a, **k: True)
    elif WHEN:
        raise SystemExit(f"crashpoint: cannot read BSUD_CRASH={os.environ['BSUD_CRASH']!r}")


if __name__ == "__main__":
    from bsud.cloud import ec2, local  # noqa: F401 - the providers, so that their methods can be wrapped
    from bsud.cli import main

    install()
    sys.exit(main(sys.argv[1:]))
