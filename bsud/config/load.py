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
from bsud.exports import EXPORT_KINDS
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
from bsud.config.source import JsonSyntaxError, read_document
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


def _where(loc: tuple[Any, ...], raw: Any) -> tuple[str | None, str | None]:
    """(drive, field) for a place in the document: ``("drives", 0, "exports", 1, "nfs", "clients")`` → drive
    ``data``, field ``exports #2 (nfs).clients``, as the rules name them too."""
    drive = None
    if len(loc) >= 2 and loc[0] == "drives" and isinstance(loc[1], int):
        try:
            name = raw["drives"][loc[1]].get("name")
        except (KeyError, IndexError, TypeError, AttributeError):
            name = None
        drive = name if isinstance(name, str) and name else f"#{loc[1] + 1}"
        rest = loc[2:]
    else:
        rest = loc
    if len(rest) >= 2 and rest[0] == "exports" and isinstance(rest[1], int):
        try:
            kind = raw["drives"][loc[1]]["exports"][rest[1]].get("kind")
        except (KeyError, IndexError, TypeError, AttributeError):
            kind = None
        tagged = len(rest) >= 3 and isinstance(rest[2], str) and rest[2] == kind  # pydantic's loc names the kind
        shown = f" ({kind})" if isinstance(kind, str) else ""
        rest = (f"exports #{rest[1] + 1}{shown}", *rest[3 if tagged else 2:])
    keys = [str(p) for p in rest if not isinstance(p, int)]
    return drive, ".".join(keys) if keys else None


def _translate(error: Any, raw: dict[str, Any], path: str) -> ConfigError:
    """One pydantic error → one ConfigError with file, drive and field."""
    loc = tuple(error["loc"])
    drive, field_name = _where(loc, raw)
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


_GONE = object()


def _set_aside(doc: Any, loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Mark what a schema error at ``loc`` is about for removal: the value itself, or — when the error is about
    something absent (a missing key, an export kind) — the deepest object that holds it. The place marked (None:
    the whole document, nothing can be checked further)."""
    node, reached = doc, ()
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node, reached = node[part], (*reached, part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node, reached = node[part], (*reached, part)
        else:
            break
    if not reached:
        return None
    parent = doc
    for part in reached[:-1]:
        parent = parent[part]
    parent[reached[-1]] = _GONE
    return reached


def _without_gone(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_gone(v) for k, v in value.items() if v is not _GONE}
    if isinstance(value, list):
        return [_without_gone(v) for v in value if v is not _GONE]
    return value


def _validate(raw: dict[str, Any], path: str) -> tuple[_ConfigFile | None, list[ConfigError],
                                                         set[tuple[str | None, str | None]]]:
    """The schema's problems with ``raw`` (all of them: pydantic reports every field at once), and the file with
    what they are about set aside, validated again so that the rules can still check everything else. The set
    aside places are returned as (drive, field) — field None for a whole drive or export."""
    problems: list[ConfigError] = []
    aside: set[tuple[str | None, str | None]] = set()
    doc = json.loads(json.dumps(raw))
    for attempt in range(6):
        try:
            return _ConfigFile.model_validate_json(json.dumps(doc), strict=True), problems, aside
        except ValidationError as exc:
            errors = exc.errors()
        if attempt == 0:  # later rounds only find what setting things aside caused: not the user's problems
            problems = [_translate(e, doc, path) for e in errors]
        for error in errors:
            loc = tuple(error["loc"])
            drive, _ = _where(loc, doc)
            marked = _set_aside(doc, loc)
            if marked is None:
                return None, problems, aside
            aside.add((drive, _where(marked, doc)[1] if len(marked) > 2 or marked[0] != "drives" else None))
        doc = _without_gone(doc)
    return None, problems, aside


def _follows_from(problem: ConfigError, aside: set[tuple[str | None, str | None]]) -> bool:
    """A rule's problem about something the schema already refused (or that only a refused value's default made):
    not worth a second line."""
    for drive, field_name in aside:
        if drive != problem.drive:
            continue
        if field_name is None:
            return True
        key = field_name.rsplit(".", 1)[-1]
        if (problem.field or "").startswith(field_name) or key in problem.reason:
            return True
    return False


#: The original bsud's docs (docs/use.md) spell the credentials section so; its code reads 'authentication'.
_ORIGINAL_SPELLING = "authentification"


def parse_config(text: str, path: str = "<config>", env: EnvSettings | None = None) -> Config:
    """Validate a config file's text; raise :class:`InvalidConfig` listing every problem (the file's own — a
    repeated key, an absurd number —, the schema's and the rules', all in one run)."""
    try:
        document = read_document(text)
    except JsonSyntaxError as exc:
        raise InvalidConfig([ConfigError(str(exc), path=path)]) from None
    raw = document.data
    if not isinstance(raw, dict):
        raise InvalidConfig([ConfigError("must hold a JSON object with a 'drives' list", path=path)])
    problems = [ConfigError(f.message, path=path, line=f.line, drive=_where(f.path, raw)[0],
                            field=_where(f.path, raw)[1]) for f in document.findings]
    warnings: list[str] = []
    if _ORIGINAL_SPELLING in raw:
        if "authentication" in raw:
            problems.append(ConfigError(f"give 'authentication' only ({_ORIGINAL_SPELLING!r} is also there)",
                                        path=path, line=document.lines.get((_ORIGINAL_SPELLING,)),
                                        field=_ORIGINAL_SPELLING))
        else:
            warnings.append(f"{path}: {_ORIGINAL_SPELLING!r} read as 'authentication' (the original bsud's docs "
                            "spell it so, its code did not read it); rename the key")
        raw = {("authentication" if k == _ORIGINAL_SPELLING else k): v for k, v in raw.items()}
    parsed, schema_problems, aside = _validate(raw, path)
    problems += schema_problems
    aside |= {_where(f.path, raw) for f in document.findings}
    if parsed is not None:
        rule_problems, rule_warnings = check_semantics(parsed, path)
        problems += [p for p in rule_problems if not _follows_from(p, aside)]
        warnings += rule_warnings
    if problems or parsed is None:
        raise InvalidConfig(problems or [ConfigError("cannot be read as a bsud config", path=path)])

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
