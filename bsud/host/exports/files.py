"""Replacing a service's config file as one transaction: generate → write a temp file → validate it → back up
the current file → atomic replace → reload the service → verify it answers → on any failure restore the backup
(or remove a file that was not there) and reload again.

A reader never sees half a file; a service is never left on a config that failed; the backup exists only while a
change is in flight (a crash leaves ``<file>.bsud-backup``, which the next change replaces).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bsud.errors import BsudError
from bsud.logs import get_logger

log = get_logger("bsud.host.exports")


class ExportError(BsudError):
    """An export could not be applied or withdrawn (temporary: retried at the next step)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=True)


def _write(path: Path, content: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, content.encode())
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def backing_file(path: str, size: int, *, what: str, kind: str) -> None:
    """A block export's file in the drive (an iSCSI LUN, an NVMe namespace): made sparse, grown to ``size``,
    never shrunk — that would cut off the data its clients wrote at its end."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    current = file.stat().st_size if file.exists() else None
    if current is not None and current > size:
        raise ExportError(f"{what}: {file} holds {current} B, more than the configured size: a {kind} is never "
                          "shrunk (its data would be cut off); give its size back, or remove the file yourself")
    if current != size:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)


def port_listening(port: int, proc: Path = Path("/proc/net")) -> bool:
    """Whether something listens on TCP ``port`` (a kernel target's listener too), from /proc/net/tcp{,6}."""
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def write_atomically(path: Path, content: str, mode: int = 0o644) -> None:
    """Replace ``path`` by ``content`` in one step (a temp file beside it, fsynced, renamed over it)."""
    temp = path.with_name(f".{path.name}.bsud-tmp")
    _write(temp, content, mode)
    os.replace(temp, path)


def replace_file(path: Path, content: str | None, *, apply: Callable[[], None], verify: Callable[[], None],
                 validate: Callable[[Path], None] | None = None, drifted: Callable[[], bool] | None = None,
                 mode: int = 0o644) -> bool:
    """Make ``path`` hold ``content`` (None: remove it) and the service use it. False when it already did.

    ``validate(temp)`` checks the new file before it replaces anything; ``apply()`` reloads the service;
    ``verify()`` checks the service answers as wanted. Each raises on failure; the old file is then put back and
    ``apply()`` run again, and :class:`ExportError` says what failed (the change is retried later).
    When the file is already right, ``drifted()`` says whether the service forgot it anyway (restarted, changed by
    hand): then ``apply()`` and ``verify()`` run again (True: something changed)."""
    current = path.read_text() if path.exists() else None
    if current == content:
        if drifted is None or not drifted():
            return False
        apply()
        verify()
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.bsud-new")
    backup = path.with_name(f"{path.name}.bsud-backup")
    if content is not None:
        _write(temp, content, mode)
        if validate is not None:
            try:
                validate(temp)
            except Exception as exc:
                temp.unlink(missing_ok=True)
                raise ExportError(f"{path}: the new file does not validate, nothing changed: {exc}") from None
    if current is not None:
        _write(backup, current, os.stat(path).st_mode & 0o7777)
    if content is not None:
        os.replace(temp, path)
    else:
        path.unlink()
    try:
        apply()
        verify()
    except Exception as exc:
        if current is not None:
            os.replace(backup, path)
        else:
            path.unlink(missing_ok=True)
        try:
            apply()
        except Exception as again:  # noqa: BLE001 - reported with the first failure
            log.error("reloading the restored file failed too", path=str(path), error=str(again))
        raise ExportError(f"{path}: {'withdrawing' if content is None else 'applying'} failed, the previous file "
                          f"is back: {exc}") from None
    backup.unlink(missing_ok=True)
    return True
