"""One daemon per status file (``<status-file>.lock``), one ``bsud snapshot`` per drive
(``<status-file>.snapshot-<drive>.lock``): exclusive ``flock`` locks holding their process's pid."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from bsud.errors import BsudError
from bsud.logs import get_logger

log = get_logger("bsud.daemon")


class AlreadyRunning(BsudError):
    pass


def _try_lock(path: Path) -> tuple[int | None, str]:
    """An exclusive, non-blocking ``flock`` on ``path`` (made if need be): (its fd, "") or (None, the holder's pid as
    it wrote it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        return None, holder
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:  # a full disk: the lock holds all the same, only the pid is not written down
        log.warning("cannot write the pid into the lock file", path=str(path), error=str(exc))
    return fd, ""


def snapshot_lock_path(status_file: str, drive: str) -> Path:
    """The lock a ``bsud snapshot`` of ``drive`` holds from before its freeze to the end of its ``--keep``."""
    return Path(f"{status_file}.snapshot-{drive}.lock")


@contextlib.contextmanager
def snapshot_lock(status_file: str, drive: str) -> Iterator[None]:
    """One ``bsud snapshot`` of a drive at a time: a second one would thaw the first one's freeze as a freeze left
    behind (and the first would thaw the second's), and its ``--keep`` would delete the first one's set, unconfirmed
    while it is taken. Released when the block ends or the process dies."""
    fd, holder = _try_lock(snapshot_lock_path(status_file, drive))
    if fd is None:
        raise AlreadyRunning(f"another 'bsud snapshot' of drive {drive!r} is running (pid {holder}); let it end")
    try:
        yield
    finally:
        os.close(fd)


def snapshot_running(status_file: str, drive: str) -> bool:
    """Whether a ``bsud snapshot`` of ``drive`` holds its lock now."""
    path = snapshot_lock_path(status_file, drive)
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def take_lock(status_file: str) -> int:
    """One daemon per status file: an exclusive lock on ``<status-file>.lock``, held until the process ends.

    A second daemon started on the same config (or the same default status file) refuses to run and names the
    first one's pid. The lock dies with its process, even after kill -9: nothing to clean up.
    """
    fd, holder = _try_lock(Path(status_file + ".lock"))
    if fd is None:
        raise AlreadyRunning(f"another bsud (pid {holder}) is running with status file {status_file}; stop it "
                             "first (or give this one its own daemon.status-file)")
    return fd
