"""The configuration files users write (TOML: budgets, pricing overrides): one parser, one error.

A leaf: imports nothing of compactobs. A problem in such a file is a `ConfigError` whose message is one
line naming the file, the line and the problem, raised where application code can catch it
(`compactobs.instrument()` / `configure()`), printed in one line by the CLI.
"""

from __future__ import annotations

import re
import sys
from decimal import Decimal
from typing import TYPE_CHECKING

from compactobs.errors import UserError

if TYPE_CHECKING:
    from compactobs._types import JSONObject

__all__ = ["ConfigError", "key_path", "line_of", "parse_toml"]


class ConfigError(UserError, ValueError):
    """A configuration file the user wrote is wrong: the message is one line (file, line, problem)."""

    def __init__(self, message: str) -> None:
        # One line, and nothing from the file that could steer a terminal (an ESC in a quoted TOML key).
        line = " ".join(message.split())
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in line))


def parse_toml(text: str, error: type[ConfigError], invalid: str) -> JSONObject:
    """The document, numbers with a fraction read exactly (Decimal). Raises `error`: `invalid` (which names
    the file) followed by the parser's message, which gives the line and column."""
    if sys.version_info >= (3, 11):
        import tomllib as toml
    else:  # pragma: no cover - 3.10 only: the same parser ships as `tomli`
        try:
            import tomli as toml
        except ImportError:
            needs = "needs the 'tomli' package (pip install tomli)"
            raise error(f"reading TOML on Python 3.10 {needs}") from None
    try:
        return toml.loads(text, parse_float=Decimal)
    except toml.TOMLDecodeError as err:
        raise error(f"{invalid}: {err}") from None
    except RecursionError:  # the parser recurses per nesting level: a hostile file can exhaust the stack
        raise error(f"{invalid}: nested too deeply") from None


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_path(dotted: str) -> list[str] | None:
    """A TOML dotted key (`models."claude-opus-4-8".batch`) as its parts; None when it does not parse."""
    parts: list[str] = []
    rest = dotted.strip()
    while rest:
        if rest[0] in "\"'":
            end = rest.find(rest[0], 1)
            if end < 0:
                return None
            parts.append(rest[1:end])
            rest = rest[end + 1 :]
        else:
            bare = _BARE_KEY.match(rest)
            if bare is None:
                return None
            parts.append(bare.group())
            rest = rest[bare.end() :]
        rest = rest.strip()
        if rest.startswith("."):
            rest = rest[1:].strip()
        elif rest:
            return None
    return parts


_HEADER = re.compile(r"^\s*\[(?!\[)(?P<key>[^\]]*)\]\s*(#.*)?$")
_ARRAY_HEADER = re.compile(r"^\s*\[\[(?P<key>[^\]]*)\]\]")
_ASSIGNMENT = re.compile(r"^\s*(?P<key>(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_.\s-])+?)\s*=")


def line_of(text: str, dotted: str) -> int | None:
    """The line (1-based) that defines the key `dotted` names in the document `text`: its `key = ...` line,
    its `[table]` header, else the nearest enclosing table or key that is written out. None when nothing
    matches (a document the parser accepted that this simple reader does not follow)."""
    target = key_path(dotted)
    if not target:
        return None
    table: list[str] = []
    best: tuple[int, int] | None = None  # (parts matched, line)
    for number, line in enumerate(text.splitlines(), start=1):
        array = _ARRAY_HEADER.match(line)
        header = _HEADER.match(line) if array is None else None
        if array is not None or header is not None:
            found = key_path((array or header).group("key"))  # type: ignore[union-attr]
            table = found or []
            full = table
        else:
            assignment = _ASSIGNMENT.match(line)
            if assignment is None:
                continue
            full = table + (key_path(assignment.group("key")) or [])
        if full == target:
            return number
        if full and full == target[: len(full)] and (best is None or len(full) > best[0]):
            best = (len(full), number)
    return best[1] if best is not None else None
