"""Logging: readable lines on a terminal; on journald, ``<N>``-prefixed lines that carry each event's level as the
journal's priority (``journalctl -p warning``) and no timestamp of their own; JSON lines anywhere else.
Secrets scrubbed.

Every event goes through :func:`scrub_secrets`, which masks values under secret-looking
keys and any registered secret value wherever it appears (in argv, in error text...).
"""

from __future__ import annotations

import io
import json as jsonlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error")
_SECRET_KEY_RE = re.compile(r"(secret|password|token|credential|authorization|session)", re.IGNORECASE)
_MASK = "********"

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secrets(values: Iterable[str | None]) -> None:
    """Remember values that must never be written to a log."""
    with _lock:
        _secrets.update(v for v in values if v and len(v) >= 4)


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """An environment for a user's command: variables with a secret-looking name or a registered secret value
    left out (the daemon's credentials never reach a hook)."""
    with _lock:
        secrets = tuple(_secrets)
    return {k: v for k, v in environ.items()
            if not _SECRET_KEY_RE.search(k) and not any(s in v for s in secrets)}


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, _MASK)
        return value
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, dict):
        return {k: (_MASK if _SECRET_KEY_RE.search(str(k)) else _scrub(v)) for k, v in value.items()}
    return value


def scrub_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-named keys and registered secret values."""
    for key in list(event):
        if _SECRET_KEY_RE.search(key):
            event[key] = _MASK
        else:
            event[key] = _scrub(event[key])
    return event


#: syslog priorities (sd-daemon(3)'s ``<N>`` prefixes) of bsud's levels.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def is_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is connected to journald: $JOURNAL_STREAM names its device and inode (systemd.exec(5))."""
    try:
        device, inode = (int(part) for part in os.environ.get("JOURNAL_STREAM", "").split(":"))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError, io.UnsupportedOperation):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


def journal_line(text: str, priority: int) -> str:
    """``text`` with journald's priority prefix on each of its lines (a traceback's lines keep the level too)."""
    return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


def _logfmt(value: Any) -> str:
    if isinstance(value, str) and value and not any(c in value for c in ' "=\\\n'):
        return value
    return jsonlib.dumps(value, default=str, ensure_ascii=False)


def render_for_journal(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    """structlog renderer for journald: ``<4>step failed drive=data error="…"`` — the priority from the level, the
    event, then its fields as key=value (JSON-quoted where needed); journald stamps the time itself."""
    priority = PRIORITIES.get(str(event.pop("level", "info")), 6)
    message = str(event.pop("event", ""))
    trace = event.pop("exception", None)
    fields = " ".join(f"{key}={_logfmt(value)}" for key, value in event.items())
    text = f"{message} {fields}".rstrip() + (f"\n{trace}" if trace else "")
    return journal_line(text, priority)


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (not when logging was set up: a caller that swaps it, such
    as a test capturing a command's output, must not leave the logs writing to a closed file)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", *, stream: TextIO | None = None, json: bool | None = None,
                      journal: bool | None = None) -> None:
    """Set up structlog: journald lines when ``stream`` is the journal (``journal=None``: detected), else
    ``json=None`` picks console lines on a terminal, JSON otherwise. No ``stream``: standard error, as it is at
    each line."""
    out: Any = stream or _Stderr()
    stream = stream or sys.stderr
    level = level.lower()
    if level not in LEVELS:
        level = "info"
    if journal is None:
        journal = json is None and is_journal(stream)
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        render_for_journal if journal
        else structlog.processors.JSONRenderer(sort_keys=False) if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    stamp = [] if journal else [structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *stamp,
            scrub_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # boto3/botocore log through the stdlib; keep them quiet unless debugging, and never at DEBUG
    # (botocore's DEBUG output includes signed request headers).
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("boto3").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def get_logger(name: str | None = None, **context: Any) -> Any:
    logger = structlog.get_logger(name) if name else structlog.get_logger()
    return logger.bind(**context) if context else logger
