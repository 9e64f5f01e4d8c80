"""Report text that is safe to print and to open: conversation ids, services, models, iteration types and
error messages are data anyone can set, so they may carry terminal escape sequences, text that reorders
itself (bidi overrides), line breaks that forge rows, spreadsheet formulas or Markdown and HTML.

`shown(text, fmt)` is the one function every renderer passes such strings through:

- every format: C0 and C1 control characters, DEL, bidi controls (U+202A-202E, U+2066-2069, U+200E,
  U+200F, U+061C) and line or paragraph separators are made visible as escapes (`\\n`, `\\t`, `\\x1b`,
  `\\u202e`: `compactobs.untrusted.escape_char`, as log lines write them), so an escape sequence is shown
  as text and never runs, and a value stays on its row. Unlike a log line's `escape`, a backslash and
  other printable text stay as they are: a report shows the value, not a quoted form of it;
- `csv`: OWASP's CSV-injection advice: a cell that starts with `=`, `+`, `-`, `@`, tab or carriage return
  is prefixed with a single quote, so a spreadsheet shows it as text instead of evaluating it;
- `md`: Markdown's inline syntax and HTML are escaped (`\\*`, `\\[`, `&lt;`...), so a value renders as the
  text it is: no link, no image, no tag, no broken table.

JSON keeps values exact (a program reads them): `json_text` writes the same characters as `\\u` escapes,
which any JSON reader turns back into the original string.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from compactobs._types import JSON

from compactobs.untrusted import escape_char

__all__ = ["json_text", "shown"]

_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_FORMULA_PREFIXES: Final = ("=", "+", "-", "@", "\t", "\r")
_MARKDOWN: Final = re.compile(r"[\\`*\[\]|~<>&]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
"""Inline Markdown and HTML; `_` only where it can open or close emphasis (`req_01`, `cost_usd` stay)."""
_MARKDOWN_ESCAPES: Final = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
_JSON_UNSAFE: Final = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    return escape_char(match.group())


def _markdown(match: re.Match[str]) -> str:
    char = match.group()
    return _MARKDOWN_ESCAPES.get(char) or "\\" + char


def shown(text: str, fmt: str = "table") -> str:
    """`text`, which came from outside, as `fmt` (table, csv, md) may show it: see the module."""
    visible = text if text.isprintable() else _UNSAFE.sub(_visible, text)
    if fmt == "csv" and text.startswith(_FORMULA_PREFIXES):
        return "'" + visible
    if fmt == "md":
        return _MARKDOWN.sub(_markdown, visible)
    return visible


def json_text(document: JSON) -> str:
    """`document` as indented JSON; control, bidi and separator characters as `\\u` escapes (lossless)."""
    text = json.dumps(document, indent=2, ensure_ascii=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"
