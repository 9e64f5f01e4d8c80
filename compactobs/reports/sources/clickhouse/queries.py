"""The ClickHouse query pieces built from `reports.measures`: each measure compiled once for ClickHouse.

The report queries (`cost`, `cache`) and the slots (`slots`) splice these into their shapes (FINAL reads,
the window over a conversation's calls, the slot tables); what a figure means is written only in
`reports.measures`. Expressions are over `c` (calls; with `next_start` for the cache), `i` (iterations),
`x` (each call's compaction cost) and `r` (the cache's per-row figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from sqlalchemy import BigInteger, Numeric, column, func, select, table

from compactobs.reports.measures.cache import cache_measures, open_write, row_figures, wrote
from compactobs.reports.measures.cost import (
    call_measures,
    is_compaction,
    iteration_cost,
    iteration_measures,
    source_cost_measures,
)
from compactobs.reports.measures.groups import group_key
from compactobs.reports.sources.clickhouse.dialect import sql
from compactobs.store.models import calls, iterations

if TYPE_CHECKING:
    from compactobs._types import SQLLabel

__all__ = [
    "JOIN_SETTINGS",
    "cache_measures_sql",
    "cache_rows_sql",
    "cache_sums_sql",
    "call_measures_sql",
    "compaction_costs",
    "group_key_sql",
    "iteration_cost_sql",
    "iteration_measures_sql",
    "next_of",
    "open_write_sql",
    "source_cost_sql",
    "wrote_sql",
]

JOIN_SETTINGS: Final = {"join_use_nulls": 1}
"""A LEFT JOIN's missing side is NULL, as in SQL (ClickHouse's default fills in zeros and empty strings)."""

_C: Final = calls.alias("c")
_I: Final = iterations.alias("i")
_X: Final = table("x", column("call_id"), column("compaction_cost", Numeric(38, 10)))
_C_NEXT: Final = table(
    "c", *(column(c.name, c.type) for c in calls.columns), column("next_start", BigInteger)
)


def _named(measures: Sequence[SQLLabel]) -> list[tuple[str, str]]:
    return [(measure.name, sql(measure.element)) for measure in measures]


def group_key_sql(name: str) -> str:
    """A non-time group key over `c` and `i` (`measures.groups.group_key`)."""
    return sql(group_key(name, _C, _I))


def call_measures_sql() -> list[tuple[str, str]]:
    """(name, SQL) of `call_measures` over `c`, the compaction cost from `x.compaction_cost` (a join with
    `compaction_costs`: ClickHouse runs no correlated subquery inside an aggregate)."""
    return _named(call_measures(_C, _I, compaction_cost=_X.c.compaction_cost))


def iteration_measures_sql() -> list[tuple[str, str]]:
    """(name, SQL) of `iteration_measures` over `c` LEFT JOIN `i`."""
    return _named(iteration_measures(_C, _I))


def iteration_cost_sql() -> str:
    """`measures.cost.iteration_cost` over `c` LEFT JOIN `i`."""
    return sql(iteration_cost(_C, _I))


def source_cost_sql() -> list[tuple[str, str]]:
    """(name, SQL) of `measures.cost.source_cost_measures` over `c`."""
    return _named(source_cost_measures(_C))


def compaction_costs(iterations_sql: str) -> str:
    """Per call, the cost of its compaction iterations (`call_id`, `compaction_cost`), from an iterations
    subquery: `measures.cost.compaction_cost_of_call`, grouped instead of correlated."""
    total = sql(func.sum(_I.c.cost_usd))
    return (
        f"(SELECT i.call_id AS call_id, {total} AS compaction_cost FROM {iterations_sql} AS i "
        f"WHERE {sql(is_compaction(_I))} GROUP BY i.call_id)"
    )


def wrote_sql() -> str:
    """`measures.cache.wrote` over `c`."""
    return sql(wrote(_C_NEXT))


def open_write_sql() -> str:
    """`measures.cache.open_write` over `c` (calls with `next_start`)."""
    return sql(open_write(_C_NEXT))


def cache_rows_sql(now_ms: int) -> list[tuple[str, str]]:
    """(name, SQL) of `measures.cache.row_figures` over `c` (calls with `next_start`) LEFT JOIN `i`."""
    return _named(row_figures(_C_NEXT, _I, now_ms))


def cache_measures_sql() -> list[tuple[str, str]]:
    """(name, SQL) of `measures.cache.cache_measures` over `r`, the rows of `cache_rows_sql`."""
    rows = select(*row_figures(_C_NEXT, _I, 0)).subquery("r")
    return _named(cache_measures(rows))


def next_of(window: str, everything: str, where: Sequence[str]) -> str:
    """The calls of `window` meeting `where` (over `c`) with `next_start`: the start of the conversation's
    next call among `everything`, for the calls that wrote to the cache in a conversation (a window function
    over the conversations that wrote: ClickHouse's shape of the SQL store's correlated lookup)."""
    condition = " WHERE " + " AND ".join(where) if where else ""
    written = f"({wrote_sql()})"
    writers = (
        condition + " AND " if condition else " WHERE "
    ) + f"c.conversation_id IS NOT NULL AND {written}"
    wrote_in = f"SELECT DISTINCT c.conversation_id FROM {window} AS c{writers}"
    # A call's next call starts after it, so the conversations' calls before the first selected writer's
    # start are not read: with the slots only the open writes are selected, the newest calls (at 10M calls,
    # 2.6 s instead of 52 s and a few MB instead of 5.5 GB).
    first = f"SELECT min(c.start_ms) FROM {window} AS c{writers}"
    following = (
        "SELECT call_id, minOrNull(start_ms) OVER (PARTITION BY conversation_id ORDER BY start_ms "
        "RANGE BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS following "
        f"FROM {everything} WHERE conversation_id IN ({wrote_in}) AND start_ms >= ({first})"
    )
    return (
        f"(SELECT c.*, if(c.conversation_id IS NOT NULL AND {written}, n.following, NULL) AS next_start "
        f"FROM {window} AS c LEFT JOIN ({following}) AS n ON n.call_id = c.call_id{condition})"
    )


def cache_sums_sql(
    calls_sql: str, iterations_sql: str, keys: Sequence[tuple[str, str]], now_ms: int, where: str = ""
) -> str:
    """SQL of the cache sums of `calls_sql` (rows of `next_of`) LEFT JOIN `iterations_sql`, grouped by `keys`
    ((label, SQL over `c` and `i`)); `where` (over `c` and `i`) selects rows first."""
    per_row = ", ".join(
        [
            *(f"{sql} AS {label}" for label, sql in keys),
            *(f"{sql} AS {name}" for name, sql in cache_rows_sql(now_ms)),
        ]
    )
    rows = f"SELECT {per_row} FROM {calls_sql} AS c LEFT JOIN {iterations_sql} AS i ON i.call_id = c.call_id"
    if where:
        rows += f" WHERE {where}"
    select = ", ".join(
        [
            *(f"r.{label} AS {label}" for label, _ in keys),
            *(f"{sql} AS {n}" for n, sql in cache_measures_sql()),
        ]
    )
    statement = f"SELECT {select} FROM ({rows}) AS r"
    if keys:
        statement += " GROUP BY " + ", ".join(f"r.{label}" for label, _ in keys)
    return statement
