"""The config file's JSON text, read strictly: a repeated key or an absurd number is found with its line, and no
text a user can write ends in a traceback.

JSON allows a key twice and Python's json keeps the last one silently — ``"target": "online", …,
"target": "delete"`` would delete a drive's volumes. Python's int() refuses numbers of more than 4300 digits with
an exception, and json recurses once per nesting level. This reader parses the text itself (strings through the
stdlib's ``scanstring``), so each of those is a :class:`Finding` with the place it is at, and the document is still
returned (the last value of a repeated key, as JSON has it; an absurd number left out) for the rest of the checks.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from json.decoder import scanstring
from typing import Any

#: Nesting deeper than this is no config of bsud's (its deepest key is about 6 levels down).
MAX_DEPTH = 32
#: No field of the config takes a number this large: anything bigger is a typo or worse.
MAX_MAGNITUDE = 10**15

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS = (("true", True), ("false", False), ("null", None))

Path = tuple[str | int, ...]


class JsonSyntaxError(ValueError):
    """The text is not JSON: ``str()`` is ``line L column C: invalid JSON: …``."""

    def __init__(self, message: str, line: int, column: int) -> None:
        self.line, self.column = line, column
        super().__init__(f"line {line} column {column}: invalid JSON: {message}")


@dataclass(frozen=True)
class Finding:
    """Something wrong at ``path`` (keys and list indexes from the document's root), on ``line``."""

    path: Path
    line: int
    message: str


@dataclass
class Document:
    data: Any
    findings: list[Finding] = field(default_factory=list)
    #: The line each key is on (the last one of a repeated key).
    lines: dict[Path, int] = field(default_factory=dict)


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.newlines = [i for i, ch in enumerate(text) if ch == "\n"]
        self.document = Document(None)

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def fail(self, message: str, pos: int) -> JsonSyntaxError:
        line = self.line(pos)
        start = self.newlines[line - 2] + 1 if line > 1 else 0
        return JsonSyntaxError(message, line, pos - start + 1)

    def skip(self, pos: int) -> int:
        match = _WHITESPACE.match(self.text, pos)
        return match.end() if match else pos

    def string(self, pos: int) -> tuple[str, int]:
        try:
            return scanstring(self.text, pos + 1, True)
        except json.JSONDecodeError as exc:
            raise self.fail(exc.msg, exc.pos) from None

    def value(self, pos: int, path: Path, depth: int) -> tuple[Any, int]:
        """The value starting at ``pos`` (after whitespace) and where it ends. A number too large is returned as
        :data:`_ABSURD` (its finding recorded)."""
        pos = self.skip(pos)
        char = self.text[pos:pos + 1]
        if char in ("{", "["):
            if depth >= MAX_DEPTH:
                raise self.fail(f"nested deeper than {MAX_DEPTH} levels", pos)
            return (self.object if char == "{" else self.array)(pos + 1, path, depth + 1)
        if char == '"':
            return self.string(pos)
        for word, value in _LITERALS:
            if self.text.startswith(word, pos):
                return value, pos + len(word)
        match = _NUMBER.match(self.text, pos)
        if match is None:
            raise self.fail("Expecting value", pos)
        return self.number(match, path), match.end()

    def number(self, match: re.Match[str], path: Path) -> Any:
        whole, fraction, exponent = match.groups()
        digits = len(whole.lstrip("-"))
        if fraction is None and exponent is None:
            value: int | float = int(whole) if digits <= 16 else MAX_MAGNITUDE  # int() refuses 4300+ digits
        else:
            value = float(match.group(0))  # never raises: inf when too large
        if abs(value) < MAX_MAGNITUDE:
            return value
        shown = match.group(0) if len(match.group(0)) <= 20 else f"a {len(match.group(0))}-character number"
        self.document.findings.append(Finding(path, self.line(match.start()), f"{shown} is not a usable value (no "
                                              "field takes a number of 10^15 or more)"))
        return _ABSURD

    def object(self, pos: int, path: Path, depth: int) -> tuple[dict[str, Any], int]:
        result: dict[str, Any] = {}
        seen: dict[str, int] = {}
        pos = self.skip(pos)
        if self.text.startswith("}", pos):
            return result, pos + 1
        while True:
            if not self.text.startswith('"', pos):
                raise self.fail("Expecting property name enclosed in double quotes", pos)
            key_at = pos
            key, pos = self.string(pos)
            pos = self.skip(pos)
            if not self.text.startswith(":", pos):
                raise self.fail("Expecting ':' delimiter", pos)
            value, pos = self.value(pos + 1, (*path, key), depth)
            line = self.line(key_at)
            if key in seen:
                self.document.findings.append(Finding((*path, key), line, f"repeated key (first on line {seen[key]}): "
                                                      "JSON keeps the last one silently and bsud will not guess which "
                                                      "you meant; remove one of them"))
            seen.setdefault(key, line)
            self.document.lines[(*path, key)] = line
            if value is _ABSURD:
                result.pop(key, None)
            else:
                result[key] = value
            pos = self.skip(pos)
            if self.text.startswith("}", pos):
                return result, pos + 1
            if not self.text.startswith(",", pos):
                raise self.fail("Expecting ',' delimiter", pos)
            pos = self.skip(pos + 1)

    def array(self, pos: int, path: Path, depth: int) -> tuple[list[Any], int]:
        result: list[Any] = []
        pos = self.skip(pos)
        if self.text.startswith("]", pos):
            return result, pos + 1
        while True:
            value, pos = self.value(pos, (*path, len(result)), depth)
            result.append(None if value is _ABSURD else value)
            pos = self.skip(pos)
            if self.text.startswith("]", pos):
                return result, pos + 1
            if not self.text.startswith(",", pos):
                raise self.fail("Expecting ',' delimiter", pos)
            pos += 1


_ABSURD = object()


def read_document(text: str) -> Document:
    """Parse ``text`` as one JSON value; raise :class:`JsonSyntaxError` when it is not JSON."""
    reader = _Reader(text)
    if text.startswith("\ufeff"):
        raise reader.fail("the file starts with a byte order mark; save it as UTF-8 without BOM", 0)
    value, end = reader.value(0, (), 0)
    end = reader.skip(end)
    if end != len(text):
        raise reader.fail("Extra data", end)
    if value is _ABSURD:
        value = None
    reader.document.data = value
    return reader.document
