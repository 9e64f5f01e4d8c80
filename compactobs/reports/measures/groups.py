"""The groupings of `report cost` and `report cache` (`--by`), and each one's key expression.

`tag:KEY` groups by a call's tag KEY (`compactobs.conversation(id, tags=...)`, Claude Code's attribution):
the `tags` column's KEY, taken out of its JSON on each engine (`tag_value`); calls without the tag form a
group of their own, with no value (shown as such, never dropped)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Final

from sqlalchemy import ColumnElement, FromClause, String, func, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from compactobs.reports.model import ReportInputError
from compactobs.reports.times import TIME_UNITS
from compactobs.untrusted import escape, tag_key_ok

if TYPE_CHECKING:
    from sqlalchemy.sql.compiler import SQLCompiler

    from compactobs._types import SQLExpr, SQLRecord, SQLValue

__all__ = [
    "BY_CHOICES",
    "CALLS_ONLY",
    "ITERATION_LEVEL",
    "KEY_OF",
    "TAG",
    "VARIANT_KEYS",
    "calls_only",
    "group_key",
    "group_values",
    "key_of",
    "label_of",
    "parse_by",
    "parse_tag",
    "tag_of",
    "tag_value",
]

TAG: Final = "tag:"
"""The prefix of a tag grouping: `tag:KEY`."""

BY_CHOICES: Final[tuple[str, ...]] = (
    "hour",
    "day",
    "week",
    "month",
    "model",
    "conversation",
    "service",
    "provider",
    "iteration-type",
)
CALLS_ONLY: Final = frozenset({"conversation", "provider"})
"""Groupings the rollups (and ClickHouse's slots) do not keep: a report grouped by one reads the calls."""
KEY_OF: Final[dict[str, str]] = {
    "hour": "hour",
    "day": "day",
    "week": "week",
    "month": "month",
    "model": "model",
    "conversation": "conversation_id",
    "service": "service",
    "provider": "provider",
    "iteration-type": "iteration_type",
    # Call-level variants: not `--by` choices (the rollups do not keep them), but groupings the SQL store
    # serves from `calls` for reconcile, beside Anthropic's own reports.
    "service_tier": "service_tier",
    "speed": "speed",
    "inference_geo": "inference_geo",
}
"""Each grouping's JSON key (its SQL label is `k_<key>`)."""
VARIANT_KEYS: Final[tuple[str, ...]] = ("service_tier", "speed", "inference_geo")
ITERATION_LEVEL: Final = frozenset({"model", "iteration-type"})
"""Groupings that read `calls LEFT JOIN iterations` (each iteration at its own model and type)."""


def parse_tag(value: str) -> str | None:
    """`tag:KEY` as its grouping name (the key as given), None for another grouping. Raises
    ReportInputError for a key no tag can have."""
    text = value.strip()
    if text[: len(TAG)].lower() != TAG:
        return None
    key = text[len(TAG) :]
    if not tag_key_ok(key):
        raise ReportInputError(
            f"--by {escape(text)!r}: a tag key is 1 to 64 letters, digits, '_', '.' or '-' (tag:agent)"
        )
    return TAG + key


def tag_of(name: str) -> str | None:
    """The tag key a grouping name groups by, None when it is not a tag grouping."""
    return name[len(TAG) :] if name.startswith(TAG) else None


def calls_only(by: Iterable[str]) -> bool:
    """Whether a report grouped by `by` reads the calls alone: the rollups (and ClickHouse's slots) keep
    neither conversations, providers nor tags."""
    return any(name in CALLS_ONLY or name.startswith(TAG) for name in by)


def key_of(name: str) -> str:
    """A grouping's JSON key: KEY_OF's, or `tag:KEY` itself."""
    return name if name.startswith(TAG) else KEY_OF[name]


def label_of(name: str) -> str:
    """A non-time grouping's SQL label: `k_<json key>`; a tag's `k_tag_<the key's UTF-8 in hex>` (a key's `.`
    and `-` are no identifier's)."""
    key = tag_of(name)
    return f"k_{KEY_OF[name]}" if key is None else f"k_tag_{key.encode().hex()}"


def parse_by(values: Iterable[str]) -> tuple[str, ...]:
    """The groupings in the order given, without repeats. Raises ReportInputError for an unknown one, or
    for two time units at once (a day is inside one month: group by the finer one)."""
    result: list[str] = []
    for value in values:
        tag = parse_tag(value)
        if tag is not None:
            if tag not in result:
                result.append(tag)
            continue
        name = value.strip().lower().replace("_", "-")
        if name in ("iteration", "type", "iteration_type"):
            name = "iteration-type"
        if name in ("conversation-id", "session"):
            name = "conversation"
        if name not in BY_CHOICES:
            choices = ", ".join(BY_CHOICES)
            raise ReportInputError(f"cannot group by {escape(value)!r}: use one of {choices} or tag:KEY")
        if name not in result:
            result.append(name)
    units = [name for name in result if name in TIME_UNITS]
    if len(units) > 1:
        raise ReportInputError(f"group by one time unit at a time, not {' and '.join(units)}")
    return tuple(result)


def group_key(name: str, c: FromClause, i: FromClause) -> ColumnElement[str]:
    """The key of non-time grouping `name` over calls `c` and iterations `i` (the model and the iteration
    type are the iteration's: only at the iteration level)."""
    key = tag_of(name)
    if key is not None:
        return tag_value(c.c.tags, key)
    if name == "conversation":
        return c.c.conversation_id
    if name == "service":
        return c.c.service_name
    if name == "provider":
        return c.c.provider
    if name == "model":
        return func.coalesce(i.c.model, c.c.response_model, c.c.request_model)
    if name == "iteration-type":
        return i.c.type
    if name in VARIANT_KEYS:
        return c.c[name]
    raise ValueError(f"no group key for {name!r}")


def group_values(
    record: SQLRecord,
    by: Sequence[str],
    time_label: Callable[[SQLRecord], str] | None = None,
    with_model: bool = False,
) -> tuple[str | None, ...]:
    """A query row's group: its keys (`k_<json key>`) in `by` order, a time unit named by `time_label(row)`,
    and with `with_model` the call's model (`k_call_model`) last."""
    values: list[str | None] = []
    for name in by:
        if name in TIME_UNITS:
            assert time_label is not None, "time groups need a label"
            values.append(time_label(record))
        else:
            values.append(record[label_of(name)])
    if with_model:
        values.append(record["k_call_model"])
    return tuple(values)


class _TagValue(FunctionElement[str]):
    """The value of one key of a `tags` JSON column (NULL when absent), compiled for each engine below."""

    name = "tag_value"
    type = String()
    inherit_cache = True


def tag_value(tags: SQLExpr, key: str) -> ColumnElement[str]:
    """Tag `key`'s value in a `tags` column (a JSON object of strings), NULL when the call has no such tag.
    `key` must be a tag key (`parse_tag`): it is also inlined in ClickHouse's SQL."""
    if not tag_key_ok(key):
        raise ValueError(f"not a tag key: {key!r}")
    value: ColumnElement[str] = _TagValue(tags, literal(key, String()))
    return value


@compiles(_TagValue)
def _tag_value_postgresql(element: _TagValue, compiler: SQLCompiler, **kw: SQLValue) -> str:
    tags, key = list(element.clauses)
    return f"(CAST({compiler.process(tags, **kw)} AS JSONB) ->> {compiler.process(key, **kw)})"


@compiles(_TagValue, "sqlite")
def _tag_value_sqlite(element: _TagValue, compiler: SQLCompiler, **kw: SQLValue) -> str:
    # A JSON path's member name quoted: a key's `.` and `-` would be path syntax. Keys hold no `"`.
    tags, key = list(element.clauses)
    path = compiler.process(literal('$."' + key.value + '"', String()), **kw)
    return f"json_extract({compiler.process(tags, **kw)}, {path})"


@compiles(_TagValue, "clickhousedb")
def _tag_value_clickhouse(element: _TagValue, compiler: SQLCompiler, **kw: SQLValue) -> str:
    # JSONExtractString says '' for a missing key; a stored tag value is never empty (bounded_tags).
    tags, key = list(element.clauses)
    return f"nullIf(JSONExtractString({compiler.process(tags, **kw)}, {compiler.process(key, **kw)}), '')"
