"""`report cache` on ClickHouse: the groups `compactobs.reports.cache` sums, from the spans table.

The per-row figures and sums are `reports.measures.cache`'s, compiled for ClickHouse (`queries`). The next
call of a conversation (whether a cache write was read back within its TTL) is a window function over the
conversations that wrote in the window: the least start after the call's own, among all the conversation's
calls (beyond the window too, as the store's lookup).
"""

from __future__ import annotations

from collections.abc import Sequence

from compactobs.reports.measures.cache import SUMMED, add_record
from compactobs.reports.measures.groups import calls_only, group_values, label_of
from compactobs.reports.model import Filters
from compactobs.reports.sources.base import Groups
from compactobs.reports.sources.clickhouse import slots, spans
from compactobs.reports.sources.clickhouse.client import ClickHouseClient
from compactobs.reports.sources.clickhouse.cost import SLOT_KEY
from compactobs.reports.sources.clickhouse.queries import (
    JOIN_SETTINGS,
    cache_sums_sql,
    group_key_sql,
    next_of,
)
from compactobs.reports.times import TIME_UNITS, bucket_label

__all__ = ["cache_groups", "calls_with_next"]


def calls_with_next(source: ClickHouseClient, filters: Filters, extra: Sequence[str] = ()) -> str:
    """The window's calls (and `extra` conditions over `c`) with `next_start`, for those that wrote to the
    cache in a conversation."""
    return next_of(
        spans.calls_of(source, filters),
        spans.calls_of(source),
        [*spans.call_conditions(filters, "c."), *extra],
    )


def cache_groups(
    source: ClickHouseClient,
    filters: Filters,
    by: Sequence[str],
    span: tuple[int, int],
    now_ms: int,
    unpriced_only: bool = False,
) -> Groups:
    """The SQL store's cache groups on ClickHouse: {group key values (in `by` order): summed figures}. With
    the slots of `compactobs clickhouse setup` when they can answer (see `slots`): the settled calls' sums
    from the slots, the open writes (when their slot was recomputed) from the calls; else every call from
    the calls. `unpriced_only`: the unpriced calls alone, from the calls."""
    from_slots = not unpriced_only and not calls_only(by) and slots.aligned(filters) and slots.ready(source)
    keys: list[tuple[str, str]] = []
    slot_keys: list[tuple[str, str]] = []
    for name in by:
        if name in TIME_UNITS:
            unit = "day" if name == "month" else name
            keys.append(("t_local", spans.local_bucket("c.start_ms", unit, filters.tz, span[0], span[1])))
            slot_keys.append(("t_local", spans.local_bucket("s.slot_ms", unit, filters.tz, span[0], span[1])))
        else:
            keys.append((label_of(name), group_key_sql(name)))
            slot_keys.append((label_of(name), SLOT_KEY.get(name, "")))
    iterations = spans.iterations_of(source, filters.since_ms)
    extra: list[str] = ["c.priced = false"] if unpriced_only else []
    if from_slots:
        open_writes = f"SELECT call_id FROM {slots.latest(source, 'open', filters)}"
        extra.append(f"c.call_id IN ({open_writes})")
        # Only the open writes' iterations, not the window's, on the hash join's right side.
        iterations = f"(SELECT * FROM {iterations} WHERE call_id IN ({open_writes}))"
    calls = calls_with_next(source, filters, extra)
    records = source.rows(cache_sums_sql(calls, iterations, keys, now_ms), JOIN_SETTINGS)
    if from_slots:
        records += slots.sums(source, filters, "cache", slot_keys, list(SUMMED))
    result: Groups = {}
    unit = next((name for name in by if name in TIME_UNITS), "")
    for record in records:
        add_record(
            result, group_values(record, by, lambda row: bucket_label(unit, int(row["t_local"]))), record
        )
    return result
