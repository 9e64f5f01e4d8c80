"""`report cost`'s measures: sums over calls alone, or over calls LEFT JOIN their iterations.

Over calls alone (`call_measures`) every call is one row whose billed totals already sum its iterations.
Over the join (`iteration_measures`) tokens and class costs come from each iteration, so each counts at its
own model and type; what belongs to the call (the call itself, its error status, its web searches and their
cost) is counted once, on its last iteration (the one that produced the response), and a call without
iteration rows is one row with its own figures.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, SupportsInt

from sqlalchemy import ColumnElement, FromClause, and_, case, false, func, or_, select

from compactobs.store.models import calls, iterations

if TYPE_CHECKING:
    from compactobs._types import SQLExpr, SQLLabel, SQLRecord

__all__ = [
    "CLASS_COSTS",
    "COUNTS",
    "HEADLINE",
    "MEASURES",
    "MONEY",
    "SUMMED",
    "add_record",
    "call_measures",
    "compaction_cost_of_call",
    "empty_measures",
    "is_compaction",
    "iteration_cost",
    "iteration_measures",
    "source_cost_measures",
    "top_level_cost",
    "top_level_measures",
]

COUNTS: Final[tuple[str, ...]] = (
    "calls",
    "error_calls",
    "iterations",
    "compactions",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "web_search_requests",
)
CLASS_COSTS: Final[tuple[str, ...]] = (
    "cost_input_usd",
    "cost_output_usd",
    "cost_cache_read_usd",
    "cost_cache_write_5m_usd",
    "cost_cache_write_1h_usd",
    "cost_server_tools_usd",
)
"""The bill split by token class (and server tools)."""
MONEY: Final[tuple[str, ...]] = ("cost_usd", *CLASS_COSTS, "compaction_cost_usd")
MEASURES: Final[tuple[str, ...]] = (*COUNTS[:11], "cost_usd", "unpriced_calls", *MONEY[1:])
"""Every row's measures, in JSON order: DESIGN.md's fields, then the cost split by token class."""
HEADLINE: Final[tuple[str, ...]] = ("top_level_cost_usd", "hidden_cost_usd")
"""Derived from each row's measures (`top_level_cost`), after them in JSON and CSV."""
SUMMED: Final[tuple[str, ...]] = tuple(
    name for name in (*COUNTS, "unpriced_calls", *MONEY) if name != "cache_creation_input_tokens"
)
"""The measures a query sums (the write total is derived)."""

_ZERO: Final = Decimal(0)


def is_compaction(i: FromClause) -> ColumnElement[bool]:
    """An iteration row of a compaction."""
    return i.c.type == "compaction"


def compaction_cost_of_call(c: FromClause = calls, i: FromClause = iterations) -> SQLExpr:
    """The cost of the compaction iterations of the call of `c`'s row, a correlated lookup by call_id."""
    return (
        select(func.sum(i.c.cost_usd)).where(i.c.call_id == c.c.call_id, is_compaction(i)).scalar_subquery()
    )


def call_measures(
    c: FromClause = calls, i: FromClause = iterations, compaction_cost: SQLExpr | None = None
) -> list[SQLLabel]:
    """Measures over calls `c` alone: one row per call, whose totals already sum its iterations.
    `compaction_cost`: each call's compaction iterations' cost (default `compaction_cost_of_call`; an
    engine that cannot correlate a lookup inside an aggregate joins it in and names the column)."""
    k = c.c
    if compaction_cost is None:
        compaction_cost = compaction_cost_of_call(c, i)
    return [
        func.count().label("calls"),
        func.sum(case((k.status == "ERROR", 1), else_=0)).label("error_calls"),
        func.sum(k.iterations_count).label("iterations"),
        func.sum(k.compactions_count).label("compactions"),
        func.sum(k.input_tokens).label("input_tokens"),
        func.sum(k.output_tokens).label("output_tokens"),
        func.sum(k.cache_read_tokens).label("cache_read_input_tokens"),
        func.sum(k.cache_write_5m_tokens).label("cache_creation_5m_input_tokens"),
        func.sum(k.cache_write_1h_tokens).label("cache_creation_1h_input_tokens"),
        func.sum(k.web_search_requests).label("web_search_requests"),
        func.sum(case((k.priced == false(), 1), else_=0)).label("unpriced_calls"),
        func.sum(k.cost_usd).label("cost_usd"),
        func.sum(k.cost_input_usd).label("cost_input_usd"),
        func.sum(k.cost_output_usd).label("cost_output_usd"),
        func.sum(k.cost_cache_read_usd).label("cost_cache_read_usd"),
        func.sum(k.cost_cache_write_5m_usd).label("cost_cache_write_5m_usd"),
        func.sum(k.cost_cache_write_1h_usd).label("cost_cache_write_1h_usd"),
        func.sum(k.cost_server_tools_usd).label("cost_server_tools_usd"),
        # Only the calls that compacted look their compaction iterations up.
        func.sum(case((k.compactions_count > 0, compaction_cost), else_=None)).label("compaction_cost_usd"),
    ]


def _carrier(c: FromClause, i: FromClause) -> ColumnElement[bool]:
    """The row of `c` LEFT JOIN `i` that carries what belongs to the call: its last iteration, or the call
    alone when it has no iteration rows."""
    return or_(i.c.call_id.is_(None), i.c.idx == func.coalesce(c.c.iterations_count, 1) - 1)


def iteration_cost(c: FromClause = calls, i: FromClause = iterations) -> SQLExpr:
    """The billed cost over `c` LEFT JOIN `i`, summed: each iteration's own, the call's server tools on its
    last iteration, and a call without iteration rows at its own cost. Grouped by iteration type, the
    bill split by type (`report cost --by iteration-type`, `report conversation`'s per-call split)."""
    k, t = c.c, i.c
    server_tools = func.coalesce(k.cost_server_tools_usd, 0)
    return func.sum(
        case((t.call_id.is_(None), k.cost_usd), (_carrier(c, i), t.cost_usd + server_tools), else_=t.cost_usd)
    )


def iteration_measures(c: FromClause = calls, i: FromClause = iterations) -> list[SQLLabel]:
    """Measures over `c` LEFT JOIN `i` on call_id: tokens and class costs per iteration; what belongs to
    the call once, on its last iteration (or on the call itself when it has no iteration rows)."""
    k, t = c.c, i.c
    carrier = _carrier(c, i)

    def per_iteration(iteration_column: SQLExpr, call_column: SQLExpr) -> SQLExpr:
        # An iteration row always carries its tokens and class costs (0, never NULL): coalesce picks the
        # call's own figures only for a call without iteration rows, and costs less than a CASE.
        return func.sum(func.coalesce(iteration_column, call_column))

    def per_call(call_column: SQLExpr) -> SQLExpr:
        return func.sum(case((carrier, call_column), else_=None))

    return [
        func.sum(case((carrier, 1), else_=0)).label("calls"),
        func.sum(case((and_(carrier, k.status == "ERROR"), 1), else_=0)).label("error_calls"),
        func.count(t.call_id).label("iterations"),
        func.sum(case((is_compaction(i), 1), else_=0)).label("compactions"),
        per_iteration(t.input_tokens, k.input_tokens).label("input_tokens"),
        per_iteration(t.output_tokens, k.output_tokens).label("output_tokens"),
        per_iteration(t.cache_read_tokens, k.cache_read_tokens).label("cache_read_input_tokens"),
        per_iteration(t.cache_write_5m_tokens, k.cache_write_5m_tokens).label(
            "cache_creation_5m_input_tokens"
        ),
        per_iteration(t.cache_write_1h_tokens, k.cache_write_1h_tokens).label(
            "cache_creation_1h_input_tokens"
        ),
        per_call(k.web_search_requests).label("web_search_requests"),
        func.sum(case((and_(carrier, k.priced == false()), 1), else_=0)).label("unpriced_calls"),
        iteration_cost(c, i).label("cost_usd"),
        per_iteration(t.cost_input_usd, k.cost_input_usd).label("cost_input_usd"),
        per_iteration(t.cost_output_usd, k.cost_output_usd).label("cost_output_usd"),
        per_iteration(t.cost_cache_read_usd, k.cost_cache_read_usd).label("cost_cache_read_usd"),
        per_iteration(t.cost_cache_write_5m_usd, k.cost_cache_write_5m_usd).label("cost_cache_write_5m_usd"),
        per_iteration(t.cost_cache_write_1h_usd, k.cost_cache_write_1h_usd).label("cost_cache_write_1h_usd"),
        per_call(k.cost_server_tools_usd).label("cost_server_tools_usd"),
        func.sum(case((is_compaction(i), t.cost_usd), else_=None)).label("compaction_cost_usd"),
    ]


def source_cost_measures(c: FromClause = calls) -> list[SQLLabel]:
    """Over the calls `c` whose source priced them itself (`source_cost_usd`: Claude Code's `cost_usd`):
    how many, the source's sum, compactobs' sum over the same calls (an unpriced one adds nothing) and how
    many compactobs could not price."""
    k = c.c
    return [
        func.count().label("calls"),
        func.sum(k.source_cost_usd).label("source_cost_usd"),
        func.sum(k.cost_usd).label("cost_usd"),
        func.sum(case((k.priced == false(), 1), else_=0)).label("unpriced_calls"),
    ]


def top_level_measures(c: FromClause = calls) -> list[SQLLabel]:
    """What the responses' top-level usage fields said, summed over calls `c`: they leave the compaction
    iterations out (DESIGN.md section 3, rule 1), so they fall short of the billed `input_tokens` and
    `output_tokens` of `call_measures`."""
    return [
        func.sum(c.c.top_level_input_tokens).label("top_level_input_tokens"),
        func.sum(c.c.top_level_output_tokens).label("top_level_output_tokens"),
    ]


def top_level_cost(
    cost: Decimal | None, compaction_cost: Decimal | None
) -> tuple[Decimal | None, Decimal | None]:
    """(what the top-level usage says, the gap): the bill without its compaction iterations, and their
    cost; (None, None) when the bill is unknown (unpriced)."""
    hidden = compaction_cost if cost is not None else None
    return (cost - hidden if cost is not None and hidden is not None else None), hidden


def empty_measures() -> dict[str, Any]:
    """Zero of every measure, in JSON order (MEASURES)."""
    return {name: _ZERO if name in MONEY else 0 for name in MEASURES}


def _num(value: SupportsInt | str | None) -> int:
    return int(value) if value is not None else 0


def _money(value: Decimal | float | str | None) -> Decimal:
    if value is None:
        return _ZERO
    return value if isinstance(value, Decimal) else Decimal(str(value))


def add_record(
    result: dict[tuple[object, ...], dict[str, Any]], group: tuple[object, ...], record: SQLRecord
) -> None:
    """Add a query's row of SUMMED measures into `result[group]` (rows of one group, e.g. a bucket label
    repeated when clocks go back, or rollups beside raw calls, are merged)."""
    row = result.get(group)
    if row is None:
        row = result[group] = empty_measures()
    for name in SUMMED:
        row[name] += _money(record[name]) if name in MONEY else _num(record[name])
    row["cache_creation_input_tokens"] = (
        row["cache_creation_5m_input_tokens"] + row["cache_creation_1h_input_tokens"]
    )
