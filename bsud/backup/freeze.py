"""Freezing a mounted filesystem for the instant its volumes are snapshotted, and never leaving it frozen.

``FIFREEZE`` (what ``fsfreeze -f`` does) makes the filesystem write everything out — for btrfs, a transaction commit:
every device holds one consistent state — and then holds every new write until ``FITHAW``. The cloud fixes each
snapshot's content at the CreateSnapshot call, so the freeze lasts only as long as those calls.

A filesystem left frozen stalls every writer on the VM, so the thaw is guarded three ways:

- in every path of the code that froze it (``with frozen(...)``);
- by a guard process started before the freeze (:func:`guard_main`): it holds the read end of a pipe whose write end
  only bsud holds. When bsud ends in any way (kill -9 included) the pipe closes and the guard thaws at once; when
  bsud is still there after ``max_seconds`` (an API call hanging), the guard thaws all the same. bsud tells it
  "thawed" first when it thawed itself, and the guard then leaves it be;
- at the next start of the daemon or of ``bsud snapshot``, each of its mounted drives is thawed if it is frozen
  (:func:`thaw_if_frozen`: ``FITHAW`` answers EINVAL when nothing is frozen).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator

from bsud.config import DriveConfig
from bsud.errors import BsudError
from bsud.host import mounts
from bsud.host.filesystem import DriveFilesystem
from bsud.lock import snapshot_running
from bsud.logs import get_logger
from bsud.naming import label_for, lv_mapper_path
from bsud.runner import Runner, python_module

log = get_logger("bsud.backup.freeze")

#: ``_IOWR('X', 119, int)`` and ``_IOWR('X', 120, int)`` (linux/fs.h).
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
#: The longest a freeze may last before the guard thaws it whatever bsud is doing.
MAX_FREEZE_SECONDS = 60.0


class FreezeError(BsudError):
    pass


def _ioctl(mount_point: str, request: int) -> None:
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, request, 0)
    finally:
        os.close(fd)


def freeze(mount_point: str) -> None:
    try:
        _ioctl(mount_point, FIFREEZE)
    except OSError as exc:
        why = "it is frozen already (by another tool?)" if exc.errno == errno.EBUSY else exc.strerror
        raise FreezeError(f"cannot freeze {mount_point}: {why}") from None


def thaw(mount_point: str) -> bool:
    """Thaw; False when it was not frozen."""
    try:
        _ioctl(mount_point, FITHAW)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise FreezeError(f"cannot thaw {mount_point}: {exc.strerror}") from None
    return True


def thaw_if_frozen(mount_point: str, drive: str) -> bool:
    """At start: a drive left frozen by a bsud that died between freeze and thaw (and its guard with it) is
    thawed, and said. True when it was."""
    try:
        thawed = thaw(mount_point)
    except (FreezeError, OSError) as exc:
        log.warning("could not check whether the drive is frozen", drive=drive, mount=mount_point, error=str(exc))
        return False
    if thawed:
        log.warning("drive was left frozen (a snapshot interrupted between freeze and thaw): thawed", drive=drive,
                    mount=mount_point)
    return thawed


def thaw_drives_left_frozen(drives: Iterable[DriveConfig], runner: Runner, status_file: str | None = None) -> list[str]:
    """At the daemon's start: each drive mounted on its path (bsud's btrfs: its label, or its LV) and frozen is
    thawed — but for a drive a ``bsud snapshot`` is taking a set of now (its lock, next to ``status_file``): that
    freeze is the snapshot's, and its guard thaws it. The drives thawed."""
    thawed = []
    for spec in drives:
        entry = mounts.mount_at(spec.mount_path)
        if entry is None or entry.fstype != "btrfs" or spec.ha is not None:
            continue
        if status_file is not None and snapshot_running(status_file, spec.name):
            log.info("a 'bsud snapshot' of the drive is running: its freeze, if any, is left to it", drive=spec.name)
            continue
        if entry.source != lv_mapper_path(spec.name):
            try:
                found = DriveFilesystem(spec.name, runner).show(spec.mount_path)
            except BsudError as exc:  # never a reason not to start: the drive's own step says what is wrong
                log.warning("could not tell whether the drive's filesystem is frozen", drive=spec.name,
                            error=str(exc))
                continue
            if found is None or found.label != label_for(spec.name):
                continue
        if thaw_if_frozen(spec.mount_path, spec.name):
            thawed.append(spec.name)
    return thawed


class Guard:
    """The guard process of one freeze (see the module)."""

    def __init__(self, mount_point: str, max_seconds: float = MAX_FREEZE_SECONDS) -> None:
        self.mount_point = mount_point
        read_end, self._write_end = os.pipe()
        self.proc = subprocess.Popen(
            python_module("bsud.backup.freeze", mount_point, str(max_seconds)),
            stdin=read_end, stdout=subprocess.PIPE, close_fds=True, start_new_session=True)
        os.close(read_end)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()  # before the freeze: the guard is listening
        if ready.strip() != b"ready":
            self.close(thawed=True)
            raise FreezeError(f"the freeze guard of {mount_point} did not start")

    def close(self, thawed: bool) -> None:
        """bsud thawed (``thawed``): the guard leaves; else it thaws now. A guard gone already (it thawed at
        ``max_seconds``) is not told."""
        try:
            if thawed:
                os.write(self._write_end, b"thawed\n")
        except BrokenPipeError:
            pass
        finally:
            os.close(self._write_end)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextlib.contextmanager
def frozen(mount_point: str, max_seconds: float = MAX_FREEZE_SECONDS) -> Iterator[float]:
    """The filesystem frozen for the block (yields when the freeze began, monotonic); thawed in every path.

    Raises :class:`FreezeError` after a block that ended normally when the filesystem was no longer frozen at its
    end: something thawed it meanwhile (the guard at ``max_seconds``, a ``fsfreeze -u``, a daemon starting), and
    what the block did was not done at one instant."""
    guard = Guard(mount_point, max_seconds)
    thawed = True  # until bsud froze it: a freeze refused (another tool's, EBUSY) is not the guard's to undo
    held = True
    try:
        freeze(mount_point)
        thawed = False
        began = time.monotonic()
        try:
            yield began
        finally:
            held = thaw(mount_point)
            thawed = True
    finally:
        guard.close(thawed)
    if not held:
        raise FreezeError(f"{mount_point} was thawed by something else while it was to be frozen (after "
                          f"{time.monotonic() - began:.1f} s; the guard thaws at {max_seconds:g} s): not one instant")


def guard_main(mount_point: str, max_seconds: float) -> int:
    """The guard: wait for bsud's word or its end (the pipe closing), at most ``max_seconds`` — then thaw unless
    bsud said it did."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    deadline = time.monotonic() + max_seconds
    said = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        readable, _, _ = select.select([0], [], [], left)
        if not readable:
            break
        chunk = os.read(0, 64)
        if not chunk:
            break
        said += chunk
        if b"thawed" in said:
            return 0
    try:
        if thaw(mount_point):
            sys.stderr.write(f"bsud freeze guard: thawed {mount_point} (bsud did not)\n")
    except FreezeError as exc:
        sys.stderr.write(f"bsud freeze guard: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(guard_main(sys.argv[1], float(sys.argv[2])))
