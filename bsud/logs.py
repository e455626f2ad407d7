"""Logging: readable lines on a terminal, JSON lines otherwise (journald); secrets scrubbed.

Every event goes through :func:`scrub_secrets`, which masks values under secret-looking
keys and any registered secret value wherever it appears (in argv, in error text...).
"""

from __future__ import annotations

import logging
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


def configure_logging(level: str = "info", *, stream: TextIO | None = None, json: bool | None = None) -> None:
    """Set up structlog. ``json=None`` picks console lines on a terminal, JSON otherwise."""
    stream = stream or sys.stderr
    level = level.lower()
    if level not in LEVELS:
        level = "info"
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrub_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
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
