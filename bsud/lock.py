"""One daemon per status file: an exclusive lock on ``<status-file>.lock`` holding the running daemon's pid."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bsud.errors import BsudError
from bsud.logs import get_logger

log = get_logger("bsud.daemon")


class AlreadyRunning(BsudError):
    pass


def take_lock(status_file: str) -> int:
    """One daemon per status file: an exclusive lock on ``<status-file>.lock``, held until the process ends.

    A second daemon started on the same config (or the same default status file) refuses to run and names the
    first one's pid. The lock dies with its process, even after kill -9: nothing to clean up.
    """
    path = Path(status_file + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(f"another bsud (pid {holder}) is running with status file {status_file}; stop it "
                             "first (or give this one its own daemon.status-file)") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:  # a full disk: the lock holds all the same, only the pid is not written down
        log.warning("cannot write the pid into the lock file", path=str(path), error=str(exc))
    return fd
