"""The groupings of `report cost` and `report cache` (`--by`), and each one's key expression."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Final

from sqlalchemy import ColumnElement, FromClause, func

from compactobs.reports.model import ReportInputError

if TYPE_CHECKING:
    from compactobs._types import SQLRecord
from compactobs.reports.times import TIME_UNITS

__all__ = [
    "BY_CHOICES",
    "CALLS_ONLY",
    "ITERATION_LEVEL",
    "KEY_OF",
    "VARIANT_KEYS",
    "group_key",
    "group_values",
    "parse_by",
]

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


def parse_by(values: Iterable[str]) -> tuple[str, ...]:
    """The groupings in the order given, without repeats. Raises ReportInputError for an unknown one, or
    for two time units at once (a day is inside one month: group by the finer one)."""
    result: list[str] = []
    for value in values:
        name = value.strip().lower().replace("_", "-")
        if name in ("iteration", "type", "iteration_type"):
            name = "iteration-type"
        if name in ("conversation-id", "session"):
            name = "conversation"
        if name not in BY_CHOICES:
            raise ReportInputError(f"cannot group by {value!r}: use one of {', '.join(BY_CHOICES)}")
        if name not in result:
            result.append(name)
    units = [name for name in result if name in TIME_UNITS]
    if len(units) > 1:
        raise ReportInputError(f"group by one time unit at a time, not {' and '.join(units)}")
    return tuple(result)


def group_key(name: str, c: FromClause, i: FromClause) -> ColumnElement[str]:
    """The key of non-time grouping `name` over calls `c` and iterations `i` (the model and the iteration
    type are the iteration's: only at the iteration level)."""
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
            values.append(record[f"k_{KEY_OF[name]}"])
    if with_model:
        values.append(record["k_call_model"])
    return tuple(values)
