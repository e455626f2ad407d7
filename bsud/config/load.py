"""Reading the file: the schema's errors turned into one line naming file, drive and field, and loading."""

from __future__ import annotations

import difflib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bsud.config.catalogue import Provider
from bsud.config.exports import EXPORT_KINDS
from bsud.config.rules import check_semantics, with_cloud_defaults
from bsud.config.schema import (
    Authentication,
    CloudSettings,
    Config,
    DaemonSettings,
    DriveConfig,
    EnvSettings,
    _ConfigFile,
)
from bsud.errors import BsudError, ConfigError

DEFAULT_CONFIG_PATH = "/etc/osc/bsud.json"


class InvalidConfig(BsudError):
    """A config with one or more problems; ``str()`` is one line per problem."""

    def __init__(self, problems: list[ConfigError]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _nearest(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class whose keys live at ``loc`` (for did-you-mean suggestions)."""
    if not loc:
        return _ConfigFile
    head = loc[0]
    if head == "drives" and len(loc) == 2:
        return DriveConfig
    if head == "cloud" and len(loc) == 1:
        return CloudSettings
    if head == "daemon" and len(loc) == 1:
        return DaemonSettings
    if head == "authentication" and len(loc) == 1:
        return Authentication
    if head == "drives" and len(loc) == 5 and loc[2] == "exports":
        return EXPORT_KINDS.get(str(loc[4]))
    return None


def _aliases(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _translate(error: Any, raw: dict[str, Any], path: str) -> ConfigError:
    """One pydantic error → one ConfigError with file, drive and field."""
    loc = tuple(error["loc"])
    drive = None
    if len(loc) >= 2 and loc[0] == "drives" and isinstance(loc[1], int):
        try:
            drive = raw["drives"][loc[1]].get("name") or f"#{loc[1] + 1}"
        except (KeyError, IndexError, TypeError, AttributeError):
            drive = f"#{loc[1] + 1}"
        rest = loc[2:]
    else:
        rest = loc
    if len(rest) >= 3 and rest[0] == "exports" and isinstance(rest[1], int):
        # ("exports", 0, "nfs", "clients") → "exports #1 (nfs).clients", as the rules name it too
        rest = (f"exports #{rest[1] + 1} ({rest[2]})", *rest[3:])
    keys = [str(p) for p in rest if not isinstance(p, int)]
    field_name = ".".join(keys) if keys else None
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        hint = _nearest(str(loc[-1]), _aliases(parent)) if parent else None
        message = "unknown key" + (f"; did you mean {hint!r}?" if hint else "; remove it")
    elif kind == "missing":
        message = "required key is missing"
    elif kind in {"int_type", "int_from_float"}:
        message = f"must be a whole number (got {_describe(value)})"
    elif kind in {"float_type"}:
        message = f"must be a number (got {_describe(value)})"
    elif kind in {"string_type"}:
        message = f"must be a string (got {_describe(value)})"
    elif kind == "enum":
        expected = error.get("ctx", {}).get("expected", "")
        message = f"must be one of {expected} (got {_describe(value)})"
    elif kind == "union_tag_invalid":
        message = f"kind {_describe(value.get('kind') if isinstance(value, dict) else value)} is not one of " \
                  f"{', '.join(EXPORT_KINDS)}"
        value = None
    elif kind == "union_tag_not_found":
        message = f"each export needs a \"kind\": {', '.join(EXPORT_KINDS)}"
    elif kind == "too_short":
        message = f"needs at least {error.get('ctx', {}).get('min_length', 1)} item"
    elif kind == "literal_error":
        message = f"must be {error.get('ctx', {}).get('expected', '')} (got {_describe(value)})"
    elif kind in {"list_type", "tuple_type", "model_type", "dict_type", "model_attributes_type"}:
        want = "a list" if kind in ("list_type", "tuple_type") else "an object"
        message = f"must be {want} (got {_describe(value)})"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        if value is not None and not isinstance(value, dict | list):
            message += f" (got {_describe(value)})"
    return ConfigError(message, path=path, drive=drive, field=field_name)


def parse_config(text: str, path: str = "<config>", env: EnvSettings | None = None) -> Config:
    """Validate a config file's text; raise :class:`InvalidConfig` listing every problem."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidConfig([ConfigError(f"line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}",
                                         path=path)]) from None
    if not isinstance(raw, dict):
        raise InvalidConfig([ConfigError("must hold a JSON object with a 'drives' list", path=path)])
    try:
        parsed = _ConfigFile.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise InvalidConfig([_translate(e, raw, path) for e in exc.errors()]) from None
    problems, warnings = check_semantics(parsed, path)
    if problems:
        raise InvalidConfig(problems)

    env = env if env is not None else EnvSettings()
    if parsed.authentication is not None:
        access, secret, origin = parsed.authentication.access_key, parsed.authentication.secret_key, "config file"
    elif env.osc_access_key and env.osc_secret_key:
        access, secret, origin = env.osc_access_key, env.osc_secret_key, "OSC_ACCESS_KEY/OSC_SECRET_KEY"
    else:
        access, secret = None, None
        origin = "none needed" if parsed.cloud.provider == Provider.LOCAL else "boto3 default chain"
        if env.osc_access_key or env.osc_secret_key:
            warnings.append("only one of OSC_ACCESS_KEY / OSC_SECRET_KEY is set; both are needed, ignoring it")
    return Config(
        path=path,
        drives=tuple(with_cloud_defaults(d, parsed.cloud) for d in parsed.drives),
        cloud=parsed.cloud,
        daemon=parsed.daemon,
        nfs=parsed.nfs,
        access_key=access,
        secret_key=secret,
        credentials_from=origin,
        warnings=tuple(warnings),
    )


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH, env: EnvSettings | None = None) -> Config:
    """Read and validate the config file at ``path``."""
    name = str(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
        mode = os.stat(name).st_mode
    except FileNotFoundError:
        raise InvalidConfig([ConfigError("file not found; pass the config with -c PATH", path=name)]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfig([ConfigError(f"cannot read: {exc}", path=name)]) from None
    config = parse_config(text, name, env)
    if '"secret-key"' in text and mode & (stat.S_IRGRP | stat.S_IROTH):
        readable = "others" if mode & stat.S_IROTH else "its group"
        warning = f"{name}: holds a secret key and is readable by {readable}; run: chmod 600 {name}"
        config = Config(**{**config.__dict__, "warnings": (*config.warnings, warning)})
    return config
