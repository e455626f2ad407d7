"""The one way bsud runs external programs.

Argument lists only (never a shell), binaries resolved once, a copied environment with
``LC_ALL=C`` and ``LVM_SUPPRESS_FD_WARNINGS=1``, a mandatory timeout, stdin closed, one
log event per command, and :class:`~bsud.errors.CommandError` on failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from bsud.errors import CommandError, MissingToolsError
from bsud.logs import get_logger
from bsud.watch import operation


def python_module(module: str, *args: str) -> list[str]:
    """The argv that runs ``python -m <module> <args>`` with this bsud importable, however bsud was started: the
    Debian package's /usr/bin/bsud puts /opt/bsud/lib on its own ``sys.path``, which a child python does not inherit
    (``-m`` alone: "No module named 'bsud'"). The module sees ``sys.argv[1:] == args`` as with ``-m``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (f"import runpy, sys; sys.path.insert(0, {root!r}); "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-s", "-c", code, *args]

log = get_logger("bsud.runner")

#: Where system tools live even when PATH (e.g. under systemd or sudo) lacks them.
_SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

#: Tool → Debian package, for the pre-flight report: the layouts' and providers' tools (the export kinds declare
#: their own with their packages, ``ExportKind.tools``, given to :func:`preflight`).
TOOL_PACKAGES: dict[str, str] = {
    "lvm": "lvm2",
    "drbdadm": "drbd-utils",
    "pvs": "lvm2",
    "dmsetup": "dmsetup",
    "btrfs": "btrfs-progs",
    "mkfs.btrfs": "btrfs-progs",
    "blkid": "util-linux",
    "wipefs": "util-linux",
    "losetup": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "udevadm": "udev",
    "fuser": "psmisc",
}


def search_path() -> str:
    parts = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    return os.pathsep.join(parts + [p for p in _SYSTEM_PATH if p not in parts])


def find_tool(name: str) -> str | None:
    return shutil.which(name, path=search_path())


def missing_tools(tools: Iterable[str], packages: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Every tool in ``tools`` that is not installed, with its package (``packages``', else :data:`TOOL_PACKAGES`')."""
    known = {**TOOL_PACKAGES, **(packages or {})}
    return [(t, known.get(t, t)) for t in tools if find_tool(t) is None]


def preflight(tools: Iterable[str] | Mapping[str, str], packages: Mapping[str, str] | None = None) -> None:
    """Raise one :class:`MissingToolsError` naming all missing tools at once (and, given a mapping of tool → who
    needs it, what needs each). ``packages``: tool → Debian package, for tools :data:`TOOL_PACKAGES` does not list
    (the export kinds')."""
    missing = missing_tools(tools, packages)
    if missing:
        users = tools if isinstance(tools, Mapping) else {}
        raise MissingToolsError([(t, f"{p}; for {users[t]}" if users.get(t) else p) for t, p in missing])


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float


class Runner:
    """Runs commands; every call needs a timeout, every call is logged once."""

    def __init__(self, extra_env: Mapping[str, str] | None = None, default_timeout: float = 120.0) -> None:
        self.extra_env = dict(extra_env or {})
        self.default_timeout = default_timeout
        self._resolved: dict[str, str] = {}
        self._local = threading.local()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A span of reads that changes nothing (an observation): within it, in this thread, a read command
        (``quiet=True``) run again with the same arguments answers what it answered the first time, so that
        the pieces of one observation can each ask ``btrfs filesystem show`` or ``vgs`` without running it twice.
        Nested spans share the outer one's answers; the answers are dropped when the outermost span ends."""
        outer = getattr(self._local, "reads", None)
        if outer is None:
            self._local.reads = {}
        try:
            yield
        finally:
            if outer is None:
                self._local.reads = None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        env["LVM_SUPPRESS_FD_WARNINGS"] = "1"
        env["PATH"] = search_path()
        return env

    def resolve(self, tool: str) -> str:
        if "/" in tool:
            return tool
        path = self._resolved.get(tool)
        if path is None:
            path = find_tool(tool)
            if path is None:
                raise MissingToolsError([(tool, TOOL_PACKAGES.get(tool, tool))])
            self._resolved[tool] = path
        return path

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = True,
        ok_codes: Iterable[int] = (0,),
        input_text: str | None = None,
        quiet: bool = False,
        on_line: Callable[[str], None] | None = None,
    ) -> Completed:
        """Run ``argv``; raise CommandError when the exit code is not in ``ok_codes`` (if ``check``)."""
        if isinstance(argv, str):  # a string would be split by nobody: refuse it loudly
            raise TypeError("Runner.run takes an argument list, not a string")
        argv = [str(a) for a in argv]
        reads: dict[tuple, Completed] | None = getattr(self._local, "reads", None) if quiet else None
        key = (tuple(argv), input_text, check, tuple(ok_codes))
        if reads is not None and on_line is None and key in reads:
            return reads[key]
        timeout = self.default_timeout if timeout is None else timeout
        executable = self.resolve(argv[0])
        started = time.monotonic()
        with operation(f"command {' '.join(argv[:3])}", timeout):
            if on_line is not None:
                proc = self._stream([executable, *argv[1:]], argv, timeout, on_line)
            else:
                proc = self._capture([executable, *argv[1:]], argv, timeout, input_text)
        duration = time.monotonic() - started
        ok = proc.returncode in set(ok_codes)
        event = "command" if ok else "command failed"
        level = log.debug if (ok and quiet) else (log.info if ok else log.warning)
        fields = {"argv": argv, "rc": proc.returncode, "duration": round(duration, 3)}
        if not ok:
            fields["stderr"] = proc.stderr.strip()[-2000:]
        level(event, **fields)
        if check and not ok:
            raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
        done = Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr, duration)
        if reads is not None and on_line is None:
            reads[key] = done
        return done

    def _capture(self, full: list[str], argv: list[str], timeout: float,
                 input_text: str | None) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        try:
            return subprocess.run(
                full,
                input=input_text,
                stdin=None if input_text is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                env=self._environment(),
                check=False,
                close_fds=True,
            )
        except subprocess.TimeoutExpired as exc:
            duration = time.monotonic() - started
            log.warning("command timed out", argv=argv, timeout=timeout, duration=round(duration, 3))
            raise CommandError(argv, None, _text(exc.stdout), _text(exc.stderr), timeout=timeout) from None

    def _stream(self, full: list[str], argv: list[str], timeout: float,
                on_line: Callable[[str], None]) -> subprocess.CompletedProcess[str]:
        """Run with stdout handed to ``on_line`` line by line as it comes (progress reports)."""
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", env=self._environment(), close_fds=True)
        out_lines: list[str] = []
        err_chunks: list[str] = []

        def read_out() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                out_lines.append(line)
                try:
                    on_line(line.rstrip("\n"))
                except Exception:  # noqa: BLE001 - a progress callback never breaks the command
                    pass

        def read_err() -> None:
            assert proc.stderr is not None
            err_chunks.append(proc.stderr.read())

        readers = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
        for t in readers:
            t.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            log.warning("command timed out", argv=argv, timeout=timeout)
            raise CommandError(argv, None, "".join(out_lines), "".join(err_chunks), timeout=timeout) from None
        for t in readers:
            t.join(timeout=10)
        return subprocess.CompletedProcess(full, proc.returncode, "".join(out_lines), "".join(err_chunks))


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
