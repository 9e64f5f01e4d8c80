"""`report cost` on ClickHouse: the groups `compactobs.reports.cost` sums, from the spans table.

The same measures as the store's `call_measures` and `iteration_measures`, one GROUP BY that ClickHouse
runs over the call spans (joined to the iteration spans for the groupings by model or iteration type).
Each measure is one entry of a list below: a column added to the store's report is one line here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from compactobs.reports._common import TIME_UNITS, Buckets, Filters, bucket_label
from compactobs.reports.clickhouse import slots, spans
from compactobs.reports.clickhouse.source import ClickHouseSource, join
from compactobs.reports.measures.cost import add_record
from compactobs.reports.measures.groups import CALLS_ONLY, ITERATION_LEVEL, KEY_OF

__all__ = ["CALL_MEASURES", "ITERATION_MEASURES", "cost_groups", "data_range"]

JOIN_SETTINGS: Final = {"join_use_nulls": 1}
"""A LEFT JOIN's missing side is NULL, as in SQL (ClickHouse's default fills in zeros and empty strings)."""

CALL_MEASURES: Final[tuple[tuple[str, str], ...]] = (
    ("calls", "count()"),
    ("error_calls", "countIf(c.status = 'ERROR')"),
    ("iterations", "sum(c.iterations_count)"),
    ("compactions", "sum(c.compactions_count)"),
    ("input_tokens", "sum(c.input_tokens)"),
    ("output_tokens", "sum(c.output_tokens)"),
    ("cache_read_input_tokens", "sum(c.cache_read_tokens)"),
    ("cache_creation_5m_input_tokens", "sum(c.cache_write_5m_tokens)"),
    ("cache_creation_1h_input_tokens", "sum(c.cache_write_1h_tokens)"),
    ("web_search_requests", "sum(c.web_search_requests)"),
    ("unpriced_calls", "countIf(c.priced = false)"),
    ("cost_usd", "sum(c.cost_usd)"),
    ("cost_input_usd", "sum(c.cost_input_usd)"),
    ("cost_output_usd", "sum(c.cost_output_usd)"),
    ("cost_cache_read_usd", "sum(c.cost_cache_read_usd)"),
    ("cost_cache_write_5m_usd", "sum(c.cost_cache_write_5m_usd)"),
    ("cost_cache_write_1h_usd", "sum(c.cost_cache_write_1h_usd)"),
    ("cost_server_tools_usd", "sum(c.cost_server_tools_usd)"),
    ("compaction_cost_usd", "NULL"),
)
"""Over the call spans alone (`store` `call_measures`); the compaction iterations' cost comes from a second
query (`COMPACTION_COST`), which joins only the calls that compacted to their compaction iterations."""
COMPACTION_COST: Final = "sum(x.compaction_cost)"

_NO_ROWS: Final = "i.call_id IS NULL"
_CARRIER: Final = f"({_NO_ROWS} OR i.idx = coalesce(c.iterations_count, 1) - 1)"


def _per_iteration(name: str, call_name: str | None = None) -> str:
    return f"sum(coalesce(i.{name}, c.{call_name or name}))"


ITERATION_MEASURES: Final[tuple[tuple[str, str], ...]] = (
    ("calls", f"countIf({_CARRIER})"),
    ("error_calls", f"countIf({_CARRIER} AND c.status = 'ERROR')"),
    ("iterations", "count(i.call_id)"),
    ("compactions", "countIf(i.type = 'compaction')"),
    ("input_tokens", _per_iteration("input_tokens")),
    ("output_tokens", _per_iteration("output_tokens")),
    ("cache_read_input_tokens", _per_iteration("cache_read_tokens")),
    ("cache_creation_5m_input_tokens", _per_iteration("cache_write_5m_tokens")),
    ("cache_creation_1h_input_tokens", _per_iteration("cache_write_1h_tokens")),
    ("web_search_requests", f"sumIf(c.web_search_requests, {_CARRIER})"),
    ("unpriced_calls", f"countIf({_CARRIER} AND c.priced = false)"),
    (
        "cost_usd",
        f"sum(multiIf({_NO_ROWS}, c.cost_usd, {_CARRIER}, "
        "i.cost_usd + coalesce(c.cost_server_tools_usd, toDecimal128(0, 10)), i.cost_usd))",
    ),
    ("cost_input_usd", _per_iteration("cost_input_usd")),
    ("cost_output_usd", _per_iteration("cost_output_usd")),
    ("cost_cache_read_usd", _per_iteration("cost_cache_read_usd")),
    ("cost_cache_write_5m_usd", _per_iteration("cost_cache_write_5m_usd")),
    ("cost_cache_write_1h_usd", _per_iteration("cost_cache_write_1h_usd")),
    ("cost_server_tools_usd", f"sumIf(c.cost_server_tools_usd, {_CARRIER})"),
    ("compaction_cost_usd", "sumIf(i.cost_usd, i.type = 'compaction')"),
)
"""Over the call spans joined to their iteration spans (`store` `iteration_measures`): tokens and class
costs per iteration; what belongs to the call once, on its last iteration."""


def compaction_costs(iterations: str) -> str:
    """Per call, the cost of its compaction iterations (`compaction_cost`), from an iterations subquery."""
    return (
        f"(SELECT call_id, sum(cost_usd) AS compaction_cost FROM {iterations} "
        "WHERE type = 'compaction' GROUP BY call_id)"
    )


def data_range(source: ClickHouseSource, filters: Filters) -> tuple[int, int] | None:
    """(first, last) start_ms of the calls in the window, None when there is none."""
    calls = spans.calls_of(source, filters)
    row = source.rows(f"SELECT min(start_ms) AS lo, max(start_ms) AS hi, count() AS n FROM {calls}")[0]
    if not row["n"]:
        return None
    return int(row["lo"]), int(row["hi"])


def group_key_sql(name: str, iteration_level: bool) -> str:
    """SQL of a non-time group key over `c` (calls) and `i` (iterations), as `cost.group_keys`."""
    if name == "conversation":
        return "c.conversation_id"
    if name == "service":
        return "c.service_name"
    if name == "provider":
        return "c.provider"
    if name == "model":
        assert iteration_level
        return "coalesce(i.model, c.response_model, c.request_model)"
    assert name == "iteration-type" and iteration_level
    return "i.type"


def cost_groups(
    source: ClickHouseSource,
    filters: Filters,
    by: Sequence[str],
    buckets: Buckets | None,
    unpriced_only: bool = False,
    with_model: bool = False,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """`cost._aggregate_raw` on ClickHouse: {group key values (in `by` order): measures}, buckets that share
    a label merged. `with_model`: the call's model is one more key, last. From the slots of
    `compactobs clickhouse setup` when they can answer (see `slots`), else from the calls."""
    iteration_level = any(name in ITERATION_LEVEL for name in by)
    from_slots = not CALLS_ONLY.intersection(by) and slots.aligned(filters) and source.slots_ready()
    keys: list[tuple[str, str]] = []
    unit = buckets.unit if buckets is not None else None
    for name in by:
        if name in TIME_UNITS:
            assert buckets is not None
            sql_unit = "day" if name == "month" else name
            lo, hi = buckets.starts[0], buckets.end
            start = "s.slot_ms" if from_slots else "c.start_ms"  # a slot is in one bucket of any zone
            keys.append(("t_local", spans.local_bucket(start, sql_unit, filters.tz, lo, hi)))
        elif from_slots:
            keys.append((f"k_{KEY_OF[name]}", SLOT_KEY[name]))
        else:
            keys.append((f"k_{KEY_OF[name]}", group_key_sql(name, iteration_level)))
    if with_model:
        call_model = "coalesce({0}.response_model, {0}.request_model)".format("s" if from_slots else "c")
        keys.append(("k_call_model", call_model))
    measures = ITERATION_MEASURES if iteration_level else CALL_MEASURES
    if from_slots:
        level = "iteration" if iteration_level else "call"
        records = slots.sums(source, filters, level, keys, [name for name, _ in measures], unpriced_only)
        return _grouped(records, by, unit, with_model)
    where = spans.call_conditions(filters, "c.")
    if unpriced_only:
        where.append("c.priced = false")
    calls = spans.calls_of(source, filters)
    if iteration_level:
        # An iteration span starts when its call ends: never before the window.
        iterations = spans.iterations_of(source, filters.since_ms)
        source_sql = f"{calls} AS c LEFT JOIN {iterations} AS i ON i.call_id = c.call_id"
    else:
        source_sql = f"{calls} AS c"
    select = join(
        [*(f"{sql} AS {label}" for label, sql in keys), *(f"{sql} AS {name}" for name, sql in measures)]
    )
    sql = f"SELECT {select} FROM {source_sql}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    group = " GROUP BY " + join([label for label, _ in keys]) if keys else ""
    records = source.rows(sql + group, JOIN_SETTINGS)
    if not iteration_level:
        # The compaction iterations' cost of the calls that compacted, by the same keys (a small join).
        compaction = compaction_costs(spans.iterations_of(source, filters.since_ms))
        labels = join([f"{sql} AS {label}" for label, sql in keys])
        costs = (
            f"SELECT {labels + ', ' if labels else ''}{COMPACTION_COST} AS compaction_cost_usd "
            f"FROM {calls} AS c INNER JOIN {compaction} AS x ON x.call_id = c.call_id "
            f"WHERE {' AND '.join([*where, 'c.compactions_count > 0'])}{group}"
        )
        by_key = {
            tuple(r[label] for label, _ in keys): r["compaction_cost_usd"]
            for r in source.rows(costs, JOIN_SETTINGS)
        }
        for record in records:
            record["compaction_cost_usd"] = by_key.get(tuple(record[label] for label, _ in keys))
    return _grouped(records, by, unit, with_model)


SLOT_KEY: Final = {
    "service": "s.service_name",
    "model": "s.model",
    "iteration-type": "s.iteration_type",
}
"""`group_key_sql`'s keys as a slot keeps them (the model: at the iteration level, as `group_key_sql`)."""


def _grouped(
    records: Sequence[dict[str, Any]], by: Sequence[str], unit: str | None, with_model: bool
) -> dict[tuple[Any, ...], dict[str, Any]]:
    result: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        values: list[Any] = []
        for name in by:
            if name in TIME_UNITS:
                assert unit is not None
                values.append(bucket_label(unit, int(record["t_local"])))
            else:
                values.append(record[f"k_{KEY_OF[name]}"])
        if with_model:
            values.append(record["k_call_model"])
        add_record(result, tuple(values), record)
    return result
