"""`report cache`'s measures: each row's figures over calls LEFT JOIN iterations, then their sums.

`row_figures` computes, once per row of calls `c` (with `next_start`, the start of the conversation's next
call) LEFT JOIN iterations `i`: the iteration's tokens and class costs (the call's own without iteration
rows), whether the row carries the call (its last iteration, or the call itself), and whether the call's
writes were wasted. `cache_measures` sums them over those rows, `r`:

- saved by reads = read tokens x the iteration's uncached input rate - what the reads cost. The rate is the
  iteration's own uncached input cost / its uncached input tokens; without uncached input it is taken from
  the writes (5m writes bill 1.25x input, 1h writes 2x); with neither, reads are assumed to bill 0.1x
  input (`estimated_iterations`);
- write premium = what the writes cost - the same tokens at the uncached input rate;
- wasted: writes whose conversation's next call started more than the TTL after the call ended, or never
  came and the TTL is over by the report's clock.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Final

from sqlalchemy import ColumnElement, FromClause, and_, case, false, func, literal_column, or_, true

if TYPE_CHECKING:
    from compactobs._types import SQLExpr, SQLLabel, SQLRecord

__all__ = [
    "MONEY",
    "SUMMED",
    "TOKENS",
    "TTL_1H_MS",
    "TTL_5M_MS",
    "add_record",
    "as_decimal",
    "cache_measures",
    "empty_sums",
    "open_write",
    "row_figures",
    "wasted",
    "wrote",
]

TTL_5M_MS: Final = 5 * 60 * 1000
TTL_1H_MS: Final = 60 * 60 * 1000

TOKENS: Final[tuple[str, ...]] = (
    "calls",
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "wasted_write_calls",
    "wasted_5m_write_tokens",
    "wasted_1h_write_tokens",
    "estimated_iterations",
    "unpriced_calls",
)
MONEY: Final[tuple[str, ...]] = ("saved_usd", "write_premium_usd", "wasted_premium_usd")
SUMMED: Final[tuple[str, ...]] = (*TOKENS, *MONEY)
"""What `cache_measures` names."""

_ZERO: Final = Decimal(0)


def wrote(c: FromClause) -> ColumnElement[bool]:
    """The call of `c`'s row wrote to the cache (its conversation's next call then decides waste)."""
    return or_(c.c.cache_write_5m_tokens > 0, c.c.cache_write_1h_tokens > 0)


def open_write(c: FromClause) -> ColumnElement[bool]:
    """A row of calls with `next_start` whose cache writes have no next call yet to judge them by: whether
    they are wasted depends on the report's clock (see `wasted`)."""
    k = c.c
    # Coalesced: a call without usage (an error) has NULL tokens, and NOT (NULL) would leave it out of both
    # the rollups and the open writes, so a rolled-up report would count one call fewer than a raw one.
    written = or_(
        func.coalesce(k.cache_write_5m_tokens, 0) > 0, func.coalesce(k.cache_write_1h_tokens, 0) > 0
    )
    return and_(k.conversation_id.is_not(None), written, k.next_start.is_(None))


def wasted(c: FromClause, ttl_ms: int, now_ms: int) -> ColumnElement[bool]:
    """The call's writes of this TTL were never read back: its conversation's next call came too late,
    or has not come and the TTL is over (calls without a conversation are never judged)."""
    k = c.c
    return and_(
        k.conversation_id.is_not(None),
        or_(
            and_(k.next_start.is_(None), literal_column(str(now_ms)) - k.end_ms > ttl_ms),
            k.next_start - k.end_ms > ttl_ms,
        ),
    )


def row_figures(c: FromClause, i: FromClause, now_ms: int) -> list[SQLLabel]:
    """What each row of `c` (calls with `next_start`) LEFT JOIN `i` (iterations) contributes, each computed
    once per row (the sums read each figure several times)."""
    k, t = c.c, i.c
    no_rows = t.call_id.is_(None)

    def pick(iteration_column: SQLExpr, call_column: SQLExpr) -> SQLExpr:
        # An iteration row always carries its tokens and class costs: the call's only without rows.
        return func.coalesce(iteration_column, call_column, 0)

    return [
        case((or_(no_rows, t.idx == func.coalesce(k.iterations_count, 1) - 1), 1), else_=0).label("carrier"),
        pick(t.input_tokens, k.input_tokens).label("uncached"),
        pick(t.cache_read_tokens, k.cache_read_tokens).label("read"),
        pick(t.cache_write_5m_tokens, k.cache_write_5m_tokens).label("w5m"),
        pick(t.cache_write_1h_tokens, k.cache_write_1h_tokens).label("w1h"),
        pick(t.cost_input_usd, k.cost_input_usd).label("cost_input"),
        pick(t.cost_cache_read_usd, k.cost_cache_read_usd).label("cost_read"),
        pick(t.cost_cache_write_5m_usd, k.cost_cache_write_5m_usd).label("cost_w5m"),
        pick(t.cost_cache_write_1h_usd, k.cost_cache_write_1h_usd).label("cost_w1h"),
        case((no_rows, k.priced), else_=t.priced).label("row_priced"),
        k.priced.label("call_priced"),
        case((wasted(c, TTL_5M_MS, now_ms), 1), else_=0).label("wasted_5m"),
        case((wasted(c, TTL_1H_MS, now_ms), 1), else_=0).label("wasted_1h"),
        case(
            (
                or_(
                    and_(k.cache_write_5m_tokens > 0, wasted(c, TTL_5M_MS, now_ms)),
                    and_(k.cache_write_1h_tokens > 0, wasted(c, TTL_1H_MS, now_ms)),
                ),
                1,
            ),
            else_=0,
        ).label("call_wasted"),
    ]


def cache_measures(r: FromClause) -> list[SQLLabel]:
    """The sums (`SUMMED`) over `r`, rows of `row_figures`."""
    k = r.c
    carrier = k.carrier == 1
    uncached, read, w5m, w1h = k.uncached, k.read, k.w5m, k.w1h
    cost_input, cost_read, cost_w5m, cost_w1h = k.cost_input, k.cost_read, k.cost_w5m, k.cost_w1h
    is_priced = k.row_priced == true()

    def lit(text: str) -> SQLExpr:
        return literal_column(text)

    # tokens x the uncached input rate, the rate taken from the iteration's own costs (multiply first). A 5m
    # write bills 1.25x input, written 4/5 with integers: exact in every engine (ClickHouse reads 1.25 as a
    # float).
    def at_input_rate(tokens: SQLExpr) -> SQLExpr:
        return case(
            (uncached > 0, tokens * cost_input / uncached),
            (w5m > 0, tokens * cost_w5m * lit("4") / (lit("5") * w5m)),
            (w1h > 0, tokens * cost_w1h / (lit("2") * w1h)),
            else_=None,
        )

    saved = case(
        (read == 0, lit("0")),
        (and_(uncached == 0, w5m == 0, w1h == 0), cost_read * lit("9")),  # reads at 0.1x input: assumed
        else_=at_input_rate(read) - cost_read,
    )
    premium_5m = case((w5m == 0, lit("0")), else_=cost_w5m - at_input_rate(w5m))
    premium_1h = case((w1h == 0, lit("0")), else_=cost_w1h - at_input_rate(w1h))
    wasted_5m = and_(w5m > 0, k.wasted_5m == 1)
    wasted_1h = and_(w1h > 0, k.wasted_1h == 1)
    return [
        func.sum(k.carrier).label("calls"),
        func.sum(uncached).label("input_tokens"),
        func.sum(read).label("cache_read_input_tokens"),
        func.sum(w5m).label("cache_creation_5m_input_tokens"),
        func.sum(w1h).label("cache_creation_1h_input_tokens"),
        func.sum(case((and_(is_priced, read > 0), saved), else_=None)).label("saved_usd"),
        func.sum(case((is_priced, premium_5m + premium_1h), else_=None)).label("write_premium_usd"),
        func.sum(case((and_(carrier, k.call_wasted == 1), 1), else_=0)).label("wasted_write_calls"),
        func.sum(case((wasted_5m, w5m), else_=0)).label("wasted_5m_write_tokens"),
        func.sum(case((wasted_1h, w1h), else_=0)).label("wasted_1h_write_tokens"),
        func.sum(
            case(
                (
                    is_priced,
                    case((wasted_5m, premium_5m), else_=lit("0"))
                    + case((wasted_1h, premium_1h), else_=lit("0")),
                ),
                else_=None,
            )
        ).label("wasted_premium_usd"),
        func.sum(case((and_(is_priced, read > 0, uncached == 0, w5m == 0, w1h == 0), 1), else_=0)).label(
            "estimated_iterations"
        ),
        func.sum(case((and_(carrier, k.call_priced == false()), 1), else_=0)).label("unpriced_calls"),
    ]


def empty_sums() -> dict[str, int | Decimal]:
    """Zero of every sum (`SUMMED`)."""
    row: dict[str, int | Decimal] = dict.fromkeys(TOKENS, 0)
    row.update(dict.fromkeys(MONEY, _ZERO))
    return row


def as_decimal(value: Decimal | float | int | str | None) -> Decimal:
    if value is None:
        return _ZERO
    if isinstance(value, Decimal):
        return value
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def add_record(
    result: dict[tuple[object, ...], dict[str, int | Decimal]], group: tuple[object, ...], record: SQLRecord
) -> None:
    """Add a query's row of `SUMMED` into `result[group]`."""
    row = result.get(group)
    if row is None:
        row = result[group] = empty_sums()
    for name in TOKENS:
        row[name] += int(record[name] or 0)
    for name in MONEY:
        row[name] += as_decimal(record[name])
