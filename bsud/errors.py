"""Every error bsud raises on purpose, and whether retrying later can help.

An error's ``str()`` is one line a person can act on: it names the file, drive,
field, command or volume concerned. ``temporary`` tells the reconcile loop
whether to retry after a delay (throttling, a wait that timed out, a device
still settling) or to report and wait for a change (bad config, foreign data on
a device); :mod:`bsud.retry` says how long, by the error's kind.
"""

from __future__ import annotations

from collections.abc import Sequence


class BsudError(Exception):
    """Base of bsud's own errors; ``temporary`` means a later retry may succeed, ``delay`` (seconds) how long to
    wait before it is worth trying (None: the daemon's own backoff)."""

    temporary: bool = False

    def __init__(self, message: str, *, temporary: bool | None = None, delay: float | None = None) -> None:
        super().__init__(message)
        if temporary is not None:
            self.temporary = temporary
        self.delay = delay


class ConfigError(BsudError):
    """The configuration cannot be used: names the file, the drive and the field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        drive: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path = path
        self.drive = drive
        self.field = field
        self.line = line
        self.reason = message
        where = []
        if path:
            where.append(str(path))
        if line:
            where.append(f"line {line}")
        if drive:
            where.append(f"drive {drive!r}")
        if field:
            where.append(f"field {field!r}")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class MissingToolsError(BsudError):
    """Some external programs bsud needs are not installed (all listed at once)."""

    def __init__(self, missing: Sequence[tuple[str, str]]) -> None:
        self.missing = list(missing)
        names = ", ".join(f"{tool} (package {pkg})" for tool, pkg in self.missing)
        super().__init__(f"missing programs: {names}; install them and start bsud again")


def _clip(text: str, limit: int = 400) -> str:
    text = " ".join(text.strip().split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CommandError(BsudError):
    """An external command failed or timed out; carries argv, rc, stdout and stderr."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stdout: str = "",
        stderr: str = "",
        *,
        timeout: float | None = None,
        temporary: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timeout = timeout
        cmd = " ".join(self.argv)
        if returncode is None:
            message = f"command timed out after {timeout:g} s: {cmd}"
        else:
            output = _clip(stderr) or _clip(stdout) or "no output"
            message = f"command failed (exit {returncode}): {cmd}: {output}"
        super().__init__(message, temporary=temporary or returncode is None)


class CloudError(BsudError):
    """A cloud API call failed; names the call and, when known, the volume. ``throttled``: refused for the rate of
    requests (temporary, with a backoff of its own: bsud.retry)."""

    def __init__(
        self,
        call: str,
        message: str,
        *,
        volume_id: str | None = None,
        code: str | None = None,
        temporary: bool = False,
        throttled: bool = False,
    ) -> None:
        self.call = call
        self.volume_id = volume_id
        self.code = code
        self.throttled = throttled
        temporary = temporary or throttled
        target = f" on {volume_id}" if volume_id else ""
        super().__init__(f"{call}{target}: {message}", temporary=temporary)


class CloudTimeout(CloudError):
    """A volume did not reach the wanted state in time (retry later)."""

    def __init__(self, volume_id: str, wanted: Sequence[str], last_state: str, timeout: float) -> None:
        self.wanted = list(wanted)
        self.last_state = last_state
        super().__init__(
            "wait",
            f"did not become {'/'.join(wanted)} within {timeout:g} s (last state: {last_state})",
            volume_id=volume_id,
            temporary=True,
        )


class AttachmentLimitError(CloudError):
    """The VM holds as many volumes as it can: the cloud refused an attach for its per-instance limit (AWS
    ``AttachmentLimitExceeded``), or bsud knows the limit is reached (Outscale's 40, its own device names).

    Waiting does not help, a person does: not temporary. Its line grows as it goes up: the executor adds the drive
    and whether the new volume was deleted (``drive``, ``deleted``), the engine when it is tried again
    (``retry_at``)."""

    def __init__(self, volume_id: str | None, cause: str, *, code: str | None = None) -> None:
        self.cause = cause
        self.drive: str | None = None
        self.deleted = False
        self.retry_at: str | None = None
        super().__init__("AttachVolume", cause, volume_id=volume_id, code=code)

    def __str__(self) -> str:
        volume = self.volume_id or "a volume"
        text = f"drive {self.drive!r}: " if self.drive else ""
        text += f"this VM takes no more volumes ({self.cause}): {volume} could not be attached"
        if self.deleted:
            text += "; the new volume was deleted (never attached, it held nothing)"
        text += (". Lower max-bsu-count, detach volumes this VM does not need, or move it to an instance type that "
                 "takes more volumes")
        if self.retry_at:
            text += f"; tried again at {self.retry_at}, or at once on reload"
        return text


class VolumeStateError(CloudError):
    """A volume reached a state it cannot leave by waiting (error, deleted, attached elsewhere)."""

    def __init__(self, volume_id: str, state: str, detail: str = "") -> None:
        self.state = state
        super().__init__("wait", f"is in state {state!r}{detail}", volume_id=volume_id)
