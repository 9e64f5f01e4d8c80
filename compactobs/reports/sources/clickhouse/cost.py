"""`report cost` on ClickHouse: the groups `compactobs.reports.cost` sums, from the spans table.

The measures are `reports.measures.cost`'s, compiled for ClickHouse (`queries`): one GROUP BY over the call
spans (joined to the iteration spans for the groupings by model or iteration type), or over setup's slots
when they can answer (`slots`). Grouped by call, the compaction iterations' cost comes from a second, small
query joining only the calls that compacted to their compaction iterations.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timezone
from typing import Final

from compactobs._types import SQLValue
from compactobs.reports.measures.cost import add_record
from compactobs.reports.measures.groups import ITERATION_LEVEL, calls_only, group_values, label_of
from compactobs.reports.model import Filters
from compactobs.reports.sources.base import DataStamp, Groups
from compactobs.reports.sources.clickhouse import slots, spans
from compactobs.reports.sources.clickhouse.client import ClickHouseClient, join
from compactobs.reports.sources.clickhouse.queries import (
    JOIN_SETTINGS,
    call_measures_sql,
    compaction_costs,
    group_key_sql,
    iteration_measures_sql,
)
from compactobs.reports.times import TIME_UNITS, Buckets, bucket_label

__all__ = ["JOIN_SETTINGS", "SLOT_KEY", "cost_groups", "data_range", "data_stamp"]

SLOT_KEY: Final = {
    "service": "s.service_name",
    "model": "s.model",
    "iteration-type": "s.iteration_type",
}
"""`group_key_sql`'s keys as a slot keeps them (the model: at the iteration level)."""


def data_range(source: ClickHouseClient, filters: Filters) -> tuple[int, int] | None:
    """(first, last) start_ms of the calls in the window, None when there is none."""
    calls = spans.calls_of(source, filters)
    row = source.rows(f"SELECT min(start_ms) AS lo, max(start_ms) AS hi, count() AS n FROM {calls}")[0]
    if not row["n"]:
        return None
    return int(row["lo"]), int(row["hi"])


def data_stamp(source: ClickHouseClient) -> DataStamp:
    """(calls, first, last start_ms) of every call of the spans table."""
    calls = spans.calls_of(source, Filters(None, None, timezone.utc))
    row = source.rows(f"SELECT count() AS n, min(start_ms) AS lo, max(start_ms) AS hi FROM {calls}")[0]
    if not row["n"]:
        return 0, None, None
    return int(row["n"]), int(row["lo"]), int(row["hi"])


def cost_groups(
    source: ClickHouseClient,
    filters: Filters,
    by: Sequence[str],
    buckets: Buckets | None,
    unpriced_only: bool = False,
    with_model: bool = False,
) -> Groups:
    """The SQL store's `aggregate_calls` on ClickHouse: {group key values (in `by` order): measures}, buckets
    that share a label merged. `with_model`: the call's model is one more key, last. From the slots of
    `compactobs clickhouse setup` when they can answer (see `slots`), else from the calls."""
    iteration_level = any(name in ITERATION_LEVEL for name in by)
    from_slots = not calls_only(by) and slots.aligned(filters) and slots.ready(source)
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
            keys.append((label_of(name), SLOT_KEY[name]))
        else:
            keys.append((label_of(name), group_key_sql(name)))
    if with_model:
        call_model = "coalesce({0}.response_model, {0}.request_model)".format("s" if from_slots else "c")
        keys.append(("k_call_model", call_model))
    measures = iteration_measures_sql() if iteration_level else call_measures_sql()
    if from_slots:
        level = "iteration" if iteration_level else "call"
        records = slots.sums(source, filters, level, keys, [name for name, _ in measures], unpriced_only)
        return _grouped(records, by, unit, with_model)
    where = spans.call_conditions(filters, "c.")
    if unpriced_only:
        where.append("c.priced = false")
    calls = spans.calls_of(source, filters)
    compaction_measure = ""
    if iteration_level:
        # An iteration span starts when its call ends: never before the window.
        iterations = spans.iterations_of(source, filters.since_ms)
        source_sql = f"{calls} AS c LEFT JOIN {iterations} AS i ON i.call_id = c.call_id"
    else:
        source_sql = f"{calls} AS c"
        (compaction_measure,) = (sql for name, sql in measures if name == "compaction_cost_usd")
        measures = [(name, sql) for name, sql in measures if name != "compaction_cost_usd"]
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
            f"SELECT {labels + ', ' if labels else ''}{compaction_measure} AS compaction_cost_usd "
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


def _grouped(
    records: Sequence[dict[str, SQLValue]], by: Sequence[str], unit: str | None, with_model: bool
) -> Groups:
    result: Groups = {}
    for record in records:
        group = group_values(
            record, by, lambda row: bucket_label(unit or "", int(row["t_local"])), with_model
        )
        add_record(result, group, record)
    return result
