"""Strings compactobs did not write (a response's model, iteration types, ids, stop reasons, a database's
error text, a damaged spool line), made safe for where they go. A leaf: it imports nothing of compactobs, so
instrument/, store/ and the CLI all use it.

- `escape`: for a log line or a terminal. Every character that is not printable (ESC, newlines, C1
  controls, bidi overrides, ...) is written as a Python escape (`\\x1b`, `\\n`, `\\u202e`) and a backslash
  as `\\\\`, so what a reader sees is what was received, on one line, and cannot steer a terminal or forge a
  log line. Long text is cut, saying how long it was.
- `bounded_id`: for an id kept in a span or the store. An id of at most `MAX_ID_CHARS` characters is kept
  as it is; a longer one keeps its start, then a marker with its length and a SHA-256 prefix of the
  whole, so two long ids stay distinct and one response cannot bloat a report.

(The reports make the control and bidi characters of what they print visible with the same `escape_char`:
compactobs.reports.render.safe.)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Final, TypeGuard

__all__ = [
    "LOG_MAX_CHARS",
    "MAX_ID_CHARS",
    "MAX_TAGS",
    "bounded_id",
    "bounded_tags",
    "checked_tags",
    "escape",
    "escape_char",
    "stored_tags",
    "tag_key_ok",
]

LOG_MAX_CHARS: Final = 200
"""How much of one untrusted string a log line shows."""
MAX_ID_CHARS: Final = 256
"""The longest id kept as it is (Anthropic's message and request ids are about 30 characters)."""

_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape_char(char: str) -> str:
    """One character as `escape` writes it: a printable one as it is, `\\n`, `\\r`, `\\t` and `\\\\` by
    name, any other as `\\xNN`, `\\uNNNN` or `\\UNNNNNNNN`. The one encoding of hostile characters: the
    reports' `shown` uses it too, for the characters it makes visible."""
    named = _NAMED.get(char)
    if named is not None:
        return named
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: object, limit: int = LOG_MAX_CHARS) -> str:
    """`text` (a str, else its str()) on one printable line: non-printable characters and backslashes
    escaped, and beyond `limit` characters cut with `... (N chars)`. Never raises."""
    try:
        value = text if isinstance(text, str) else str(text)
    except Exception:
        return f"<unprintable {type(text).__name__}>"
    cut = value[:limit]
    shown = cut if cut.isprintable() and "\\" not in cut else "".join(map(escape_char, cut))
    if len(value) > limit:
        shown += f"... ({len(value):,} chars)"
    return shown


def bounded_id(value: str) -> str:
    """`value` if it has at most MAX_ID_CHARS characters; else its start, then
    `...[N chars, sha256:<32 hex digits of the whole>]`, MAX_ID_CHARS characters in all. Applying it
    again changes nothing."""
    if len(value) <= MAX_ID_CHARS:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    marker = f"...[{len(value)} chars, sha256:{digest}]"
    return value[: MAX_ID_CHARS - len(marker)] + marker


# Tags (semconv.TAG_PREFIX): what a key may be, how many a call carries; values are bounded as ids are.
_TAG_KEY: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_TAGS: Final = 16


def tag_key_ok(key: object) -> TypeGuard[str]:
    """Whether `key` is a tag key (letters, digits, `_`, `.`, `-`; 1 to 64 characters)."""
    return isinstance(key, str) and _TAG_KEY.fullmatch(key) is not None


def bounded_tags(pairs: Iterable[tuple[object, object]]) -> dict[str, str]:
    """The tags to keep of (key, value) pairs from anywhere: keys that are tag keys, values that are
    non-empty strings (NUL removed: PostgreSQL text cannot hold it) cut as a long id is, at most the first
    16 by key; the rest left out. Never raises."""
    kept: dict[str, str] = {}
    try:
        for key, value in pairs:
            if not tag_key_ok(key) or not isinstance(value, str):
                continue
            value = value.replace("\x00", "")
            if not _encodable(value):  # a lone surrogate: no database stores it; the call would be refused
                value = value.encode("utf-8", "replace").decode("utf-8")
            if value:
                kept[key] = bounded_id(value)
    except Exception:
        pass
    return {key: kept[key] for key in sorted(kept)[:MAX_TAGS]}


def checked_tags(tags: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """Tags an application gave (`conversation(tags=...)`, `GuardPolicy(tags=...)`) as kept on the calls:
    (key, value) pairs sorted by key, values bounded as `bounded_tags` does. ValueError, one line, for what
    would not be kept as given (a mistake in the caller's code)."""
    if tags is None:
        return ()
    if not isinstance(tags, Mapping):
        raise ValueError("tags must be a mapping of str to str")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags, not {len(tags)}")
    for key, value in tags.items():
        if not tag_key_ok(key):
            raise ValueError(f"tag key {escape(key)!r}: use 1 to 64 letters, digits, '_', '.' or '-'")
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ValueError(f"tag {key}: its value must be a non-empty string without NUL")
        if not _encodable(value):
            raise ValueError(f"tag {key}: its value is not valid Unicode text (a lone surrogate)")
    return tuple(bounded_tags(tags.items()).items())


def _encodable(text: str) -> bool:
    """Whether `text` is valid Unicode (no lone surrogate, as `os.fsdecode` leaves for undecodable bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def merged_tags(
    over: tuple[tuple[str, str], ...], below: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """`below`'s tags with `over`'s in their place key by key, sorted by key. At most MAX_TAGS: every one of
    `over`'s is kept (a conversation's own tags win over its service's), then `below`'s other keys in key
    order while there is room. Either one empty: the other, as it is. Never raises."""
    if not below:
        return over
    if not over:
        return below
    kept = dict(over)
    for key, value in sorted(below):
        if len(kept) >= MAX_TAGS:
            break
        kept.setdefault(key, value)
    return tuple(sorted(kept.items()))


def stored_tags(text: object) -> dict[str, str]:
    """The tags a `tags` column holds (a JSON object of strings): {} for NULL or what is not tags. Never
    raises."""
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return bounded_tags(value.items()) if isinstance(value, dict) else {}
