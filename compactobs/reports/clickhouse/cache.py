"""`report cache` on ClickHouse: the groups `compactobs.reports.cache` sums, from the spans table.

The same per-row figures and measures as the store's `_per_row` and `_measures`, in ClickHouse SQL. The next
call of a conversation (whether a cache write was read back within its TTL) is a window function over the
conversations that wrote in the window: the least start after the call's own, among all the conversation's
calls (beyond the window too, as the store's lookup). Money is summed at 30 decimal places (Decimal256),
then rounded as the store's report rounds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from compactobs.reports._common import TIME_UNITS, Filters, bucket_label
from compactobs.reports.clickhouse import slots, spans
from compactobs.reports.clickhouse.cost import JOIN_SETTINGS, SLOT_KEY, group_key_sql
from compactobs.reports.clickhouse.source import ClickHouseSource
from compactobs.reports.measures.cache import TTL_1H_MS, TTL_5M_MS, add_record
from compactobs.reports.measures.groups import CALLS_ONLY, KEY_OF

__all__ = ["cache_groups"]

_WIDE: Final = 30
_WROTE: Final = "(c.cache_write_5m_tokens > 0 OR c.cache_write_1h_tokens > 0)"


def _d(expression: str) -> str:
    return f"toDecimal256({expression}, {_WIDE})"


def _wasted(ttl_ms: int, now_ms: int) -> str:
    return (
        "(c.conversation_id IS NOT NULL AND ((c.next_start IS NULL AND "
        f"{now_ms} - c.end_ms > {ttl_ms}) OR c.next_start - c.end_ms > {ttl_ms}))"
    )


def _per_row(now_ms: int) -> list[tuple[str, str]]:
    """(name, SQL) of each row's figures over `c` (calls with next_start) LEFT JOIN `i` (iterations)."""

    def pick(iteration: str, call: str) -> str:
        return f"coalesce(i.{iteration}, c.{call}, 0)"

    def money(iteration: str, call: str) -> str:
        return _d(f"coalesce(i.{iteration}, c.{call}, toDecimal128(0, 10))")

    w5m, w1h = _wasted(TTL_5M_MS, now_ms), _wasted(TTL_1H_MS, now_ms)
    return [
        ("carrier", "if(i.call_id IS NULL OR i.idx = coalesce(c.iterations_count, 1) - 1, 1, 0)"),
        ("uncached", pick("input_tokens", "input_tokens")),
        ("read", pick("cache_read_tokens", "cache_read_tokens")),
        ("w5m", pick("cache_write_5m_tokens", "cache_write_5m_tokens")),
        ("w1h", pick("cache_write_1h_tokens", "cache_write_1h_tokens")),
        ("cost_input", money("cost_input_usd", "cost_input_usd")),
        ("cost_read", money("cost_cache_read_usd", "cost_cache_read_usd")),
        ("cost_w5m", money("cost_cache_write_5m_usd", "cost_cache_write_5m_usd")),
        ("cost_w1h", money("cost_cache_write_1h_usd", "cost_cache_write_1h_usd")),
        ("row_priced", "if(i.call_id IS NULL, c.priced, i.priced)"),
        ("call_priced", "c.priced"),
        ("wasted_5m", f"if({w5m}, 1, 0)"),
        ("wasted_1h", f"if({w1h}, 1, 0)"),
        (
            "call_wasted",
            f"if((c.cache_write_5m_tokens > 0 AND {w5m}) OR (c.cache_write_1h_tokens > 0 AND {w1h}), 1, 0)",
        ),
    ]


def _at_input_rate(tokens: str) -> str:
    # The rate from the iteration's own costs, multiplied first; writes bill 1.25x (5m) or 2x (1h) input.
    return (
        f"multiIf(r.uncached > 0, {tokens} * r.cost_input / r.uncached, "
        f"r.w5m > 0, {tokens} * r.cost_w5m * 4 / (5 * r.w5m), "
        f"r.w1h > 0, {tokens} * r.cost_w1h / (2 * r.w1h), NULL)"
    )


def _measures() -> list[tuple[str, str]]:
    """(name, SQL) of the measures over `r`, the rows of `_per_row` (`cache._measures`)."""
    zero = _d("0")
    priced = "(r.row_priced = true)"
    saved = (
        f"multiIf(r.read = 0, {zero}, r.uncached = 0 AND r.w5m = 0 AND r.w1h = 0, r.cost_read * 9, "
        f"{_at_input_rate('r.read')} - r.cost_read)"
    )
    premium_5m = f"if(r.w5m = 0, {zero}, r.cost_w5m - {_at_input_rate('r.w5m')})"
    premium_1h = f"if(r.w1h = 0, {zero}, r.cost_w1h - {_at_input_rate('r.w1h')})"
    wasted_5m = "(r.w5m > 0 AND r.wasted_5m = 1)"
    wasted_1h = "(r.w1h > 0 AND r.wasted_1h = 1)"
    return [
        ("calls", "sum(r.carrier)"),
        ("input_tokens", "sum(r.uncached)"),
        ("cache_read_input_tokens", "sum(r.read)"),
        ("cache_creation_5m_input_tokens", "sum(r.w5m)"),
        ("cache_creation_1h_input_tokens", "sum(r.w1h)"),
        ("saved_usd", f"sumIf({saved}, {priced} AND r.read > 0)"),
        ("write_premium_usd", f"sumIf({premium_5m} + {premium_1h}, {priced})"),
        ("wasted_write_calls", "countIf(r.carrier = 1 AND r.call_wasted = 1)"),
        ("wasted_5m_write_tokens", f"sumIf(r.w5m, {wasted_5m})"),
        ("wasted_1h_write_tokens", f"sumIf(r.w1h, {wasted_1h})"),
        (
            "wasted_premium_usd",
            f"sumIf(if({wasted_5m}, {premium_5m}, {zero}) + if({wasted_1h}, {premium_1h}, {zero}), {priced})",
        ),
        (
            "estimated_iterations",
            f"countIf({priced} AND r.read > 0 AND r.uncached = 0 AND r.w5m = 0 AND r.w1h = 0)",
        ),
        ("unpriced_calls", "countIf(r.carrier = 1 AND r.call_priced = false)"),
    ]


OPEN_WRITE: Final = (
    "(c.conversation_id IS NOT NULL AND (coalesce(c.cache_write_5m_tokens, 0) > 0 OR "
    "coalesce(c.cache_write_1h_tokens, 0) > 0) AND c.next_start IS NULL)"
)
"""A row of `calls_with_next` whose writes have no next call yet: whether they are wasted depends on the
report's clock (`cache.open_write`); the slots keep the other calls, the report reads these."""


def calls_with_next(source: ClickHouseSource, filters: Filters, extra: Sequence[str] = ()) -> str:
    """The window's calls (and `extra` conditions over `c`) with `next_start`, for those that wrote to the
    cache in a conversation."""
    return next_of(
        spans.calls_of(source, filters),
        spans.calls_of(source),
        [*spans.call_conditions(filters, "c."), *extra],
    )


def next_of(window: str, everything: str, where: Sequence[str]) -> str:
    """The calls of `window` meeting `where` (over `c`) with `next_start`: the conversation's next call
    among `everything`."""
    condition = " WHERE " + " AND ".join(where) if where else ""
    writers = (
        condition + " AND " if condition else " WHERE "
    ) + f"c.conversation_id IS NOT NULL AND {_WROTE}"
    wrote = f"SELECT DISTINCT c.conversation_id FROM {window} AS c{writers}"
    # A call's next call starts after it, so the conversations' calls before the first selected writer's
    # start are not read: with the slots only the open writes are selected, the newest calls (at 10M calls,
    # 2.6 s instead of 52 s and a few MB instead of 5.5 GB).
    first = f"SELECT min(c.start_ms) FROM {window} AS c{writers}"
    following = (
        "SELECT call_id, minOrNull(start_ms) OVER (PARTITION BY conversation_id ORDER BY start_ms "
        "RANGE BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS following "
        f"FROM {everything} WHERE conversation_id IN ({wrote}) AND start_ms >= ({first})"
    )
    return (
        f"(SELECT c.*, if(c.conversation_id IS NOT NULL AND {_WROTE}, n.following, NULL) AS next_start "
        f"FROM {window} AS c LEFT JOIN ({following}) AS n ON n.call_id = c.call_id{condition})"
    )


def measures_sql(
    calls: str, iterations: str, keys: Sequence[tuple[str, str]], now_ms: int, where: str = ""
) -> str:
    """SQL of the measures of `calls` (rows of `next_of`) LEFT JOIN `iterations`, grouped by `keys`
    ((label, SQL over `c` and `i`)); `where` (over `c` and `i`) selects rows first."""
    per_row = ", ".join(
        [
            *(f"{sql} AS {label}" for label, sql in keys),
            *(f"{sql} AS {name}" for name, sql in _per_row(now_ms)),
        ]
    )
    rows = f"SELECT {per_row} FROM {calls} AS c LEFT JOIN {iterations} AS i ON i.call_id = c.call_id"
    if where:
        rows += f" WHERE {where}"
    select = ", ".join(
        [*(f"r.{label} AS {label}" for label, _ in keys), *(f"{sql} AS {n}" for n, sql in _measures())]
    )
    sql = f"SELECT {select} FROM ({rows}) AS r"
    if keys:
        sql += " GROUP BY " + ", ".join(f"r.{label}" for label, _ in keys)
    return sql


def cache_groups(
    source: ClickHouseSource,
    filters: Filters,
    by: Sequence[str],
    span: tuple[int, int],
    now_ms: int,
    unpriced_only: bool = False,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """`cache._aggregate` on ClickHouse: {group key values (in `by` order): summed figures}. With the
    slots of `compactobs clickhouse setup` when they can answer (see `slots`): the settled calls' sums from
    the slots, the open writes (`OPEN_WRITE` when their slot was recomputed) from the calls; else every
    call from the calls. `unpriced_only`: the unpriced calls alone, from the calls."""
    from_slots = (
        not unpriced_only
        and not CALLS_ONLY.intersection(by)
        and slots.aligned(filters)
        and source.slots_ready()
    )
    keys: list[tuple[str, str]] = []
    slot_keys: list[tuple[str, str]] = []
    for name in by:
        if name in TIME_UNITS:
            unit = "day" if name == "month" else name
            keys.append(("t_local", spans.local_bucket("c.start_ms", unit, filters.tz, span[0], span[1])))
            slot_keys.append(("t_local", spans.local_bucket("s.slot_ms", unit, filters.tz, span[0], span[1])))
        else:
            keys.append((f"k_{KEY_OF[name]}", group_key_sql(name, True)))
            slot_keys.append((f"k_{KEY_OF[name]}", SLOT_KEY.get(name, "")))
    iterations = spans.iterations_of(source, filters.since_ms)
    extra: list[str] = ["c.priced = false"] if unpriced_only else []
    if from_slots:
        open_writes = f"SELECT call_id FROM {slots.latest(source, 'open', filters)}"
        extra.append(f"c.call_id IN ({open_writes})")
        # Only the open writes' iterations, not the window's, on the hash join's right side.
        iterations = f"(SELECT * FROM {iterations} WHERE call_id IN ({open_writes}))"
    calls = calls_with_next(source, filters, extra)
    records = source.rows(measures_sql(calls, iterations, keys, now_ms), JOIN_SETTINGS)
    if from_slots:
        records += slots.sums(source, filters, "cache", slot_keys, [name for name, _ in _measures()])
    result: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        values: list[Any] = []
        for name in by:
            if name in TIME_UNITS:
                values.append(bucket_label(name, int(record["t_local"])))
            else:
                values.append(record[f"k_{KEY_OF[name]}"])
        add_record(result, tuple(values), record)
    return result
