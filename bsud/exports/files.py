"""Replacing a service's config file as one transaction: generate → write a temp file → validate it → back up
the current file → atomic replace → reload the service → verify it answers → on any failure restore the backup
(or remove a file that was not there) and reload again.

A reader never sees half a file; a service is never left on a config that failed; the backup exists only while a
change is in flight (a crash leaves ``<file>.bsud-backup``, which the next change replaces).

Also what the block exports share: their backing files (made only once every precondition holds; a failed attempt
takes away what it made, never a file that was there), and the one rule for whether a TCP address and port is free
or an export's listener up, read from /proc/net/tcp{,6}.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bsud.errors import BsudError
from bsud.logs import get_logger

log = get_logger("bsud.exports")


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


def check_backing_file(path: str, size: int, *, what: str, kind: str) -> None:
    """Refuse a block export's file that holds more than ``size``: it is never shrunk (that would cut off the data
    its clients wrote at its end). Changes nothing: checked with the other preconditions, before anything is made."""
    try:
        current = os.stat(path).st_size
    except FileNotFoundError:
        return
    if current > size:
        raise ExportError(f"{what}: {path} holds {current} B, more than the configured size: a {kind} is never "
                          "shrunk (its data would be cut off); give its size back, or remove the file yourself")


def backing_file(path: str, size: int, *, what: str, kind: str) -> bool:
    """A block export's file in the drive (an iSCSI LUN, an NVMe namespace): made sparse, grown to ``size``,
    never shrunk. True when this call made the file (it was not there)."""
    file = Path(path)
    check_backing_file(path, size, what=what, kind=kind)
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    made = False
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        made = True
    except FileExistsError:
        if file.stat().st_size == size:
            return False
        fd = os.open(file, os.O_WRONLY | os.O_CLOEXEC)  # never O_TRUNC: it holds the clients' data
    try:
        current = os.fstat(fd).st_size
        if current > size:  # grown since it was checked: never cut
            raise ExportError(f"{what}: {path} holds {current} B, more than the configured size: a {kind} is "
                              "never shrunk; give its size back")
        if current != size:
            os.ftruncate(fd, size)
            os.fsync(fd)
    except BaseException:
        if made:  # made empty by this call an instant ago: nothing of anyone's is in it
            file.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return made


class MadeFiles:
    """The backing files (and directories) one attempt to apply block exports made, so that a failed attempt
    leaves nothing behind. Only what this attempt made is taken away, and a file only while it is still the one
    made and nothing was written to it (no block allocated): a file that was there before may hold a client's data
    and is never removed, nor truncated."""

    def __init__(self) -> None:
        self.files: list[tuple[str, int, int]] = []   # path, st_dev, st_ino
        self.dirs: list[Path] = []

    def make(self, path: str, size: int, *, what: str, kind: str) -> None:
        """:func:`backing_file`, remembering what it made."""
        missing = []
        parent = Path(path).parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        try:
            made = backing_file(path, size, what=what, kind=kind)
        finally:
            self.dirs += [d for d in reversed(missing) if d.is_dir()]
        if made:
            st = os.stat(path)
            self.files.append((path, st.st_dev, st.st_ino))

    def undo(self) -> None:
        """Take away what was made (the newest first); what cannot or must not be removed is logged and left."""
        for path, dev, ino in reversed(self.files):
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) != (dev, ino) or st.st_blocks:
                    log.warning("a file this attempt made is kept: it was written to or replaced", path=path)
                    continue
                os.unlink(path)
                log.info("removed the file a failed export made", path=path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("cannot remove the file a failed export made", path=path, error=str(exc))
        for directory in reversed(self.dirs):
            try:
                directory.rmdir()  # only while empty
            except OSError:
                pass
        self.files, self.dirs = [], []


#: Where the kernel lists its TCP sockets (``tcp`` for IPv4, ``tcp6`` for IPv6).
PROC_NET = Path("/proc/net")
#: The state of a listening socket in /proc/net/tcp{,6} (``TCP_LISTEN``).
LISTEN = "0A"


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Listener:
    """A TCP socket in the listening state: its address (an IPv4-mapped IPv6 address as the IPv4 one) and port."""

    address: IPAddress
    port: int

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if self.address.version == 6 else f"{self.address}:{self.port}"


def plain_address(address: str | IPAddress) -> IPAddress:
    """An IP address as the kernel compares it: ``::ffff:a.b.c.d`` (IPv4-mapped) is the IPv4 address a.b.c.d."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip


def _proc_address(text: str) -> IPAddress:
    """An address of /proc/net/tcp{,6}: each 32-bit word of the address (one for IPv4, four for IPv6) printed as
    a hexadecimal number in the machine's byte order (``0100007F`` is 127.0.0.1 on a little-endian machine)."""
    if len(text) not in (8, 32):
        raise ValueError(f"{text!r} is not an address of /proc/net/tcp")
    packed = b"".join(int(text[i:i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(text), 8))
    return plain_address(ipaddress.ip_address(packed))


def parse_listeners(text: str) -> list[Listener]:
    """The listening sockets of one /proc/net/tcp or tcp6 text (its header and other states left out)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != LISTEN or ":" not in fields[1]:
            continue  # the header, a connection (01 ESTABLISHED, 06 TIME_WAIT…)
        address, _, port = fields[1].rpartition(":")
        try:
            found.append(Listener(_proc_address(address), int(port, 16)))
        except ValueError:
            continue
    return found


def listeners(proc: Path = PROC_NET) -> list[Listener]:
    """Every TCP listener of the host (kernel targets' too), from /proc/net/tcp and tcp6."""
    found: list[Listener] = []
    for name in ("tcp", "tcp6"):
        try:
            found += parse_listeners((proc / name).read_text())
        except OSError:
            continue
    return found


def blocking(address: str | IPAddress, port: int, found: list[Listener]) -> list[Listener]:
    """The listeners among ``found`` that keep ``address:port`` from being listened on: one on that port and that
    address, or on a wildcard that covers it (``::`` covers every address; ``0.0.0.0`` every IPv4 one, and ``::``,
    which listens on IPv4 too); and for a wildcard ``address``, any listener on the port that it would cover.
    A listener on the same port at another address does not block (the kernel binds both)."""
    want = plain_address(address)
    blocked = []
    for listener in found:
        if listener.port != port:
            continue
        have = listener.address
        if have == want or _covers(have, want) or _covers(want, have):
            blocked.append(listener)
    return blocked


def _covers(wildcard: IPAddress, other: IPAddress) -> bool:
    """Whether a socket listening on ``wildcard`` takes ``other`` too (only unspecified addresses cover)."""
    if not wildcard.is_unspecified:
        return False
    return wildcard.version == 6 or other.version == 4


def endpoint(address: str, port: int) -> str:
    """``address:port`` as written in messages (``[::1]:4420`` for IPv6)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def port_busy(address: str, port: int, proc: Path = PROC_NET) -> list[Listener]:
    """The listeners that keep ``address:port`` from being listened on ([] when it is free). The one rule every
    export kind checks a port with."""
    return blocking(address, port, listeners(proc))


def port_listening(address: str, port: int, proc: Path = PROC_NET) -> bool:
    """Whether something listens on exactly ``address:port`` (an export's own listener is up): a listener on the
    same port at another address, or on a wildcard, is not the export's."""
    want = plain_address(address)
    return any(listener.address == want and listener.port == port for listener in listeners(proc))


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
