"""`report cost`'s groups from the SQL store's `calls` (and `iterations`): one GROUP BY, any SQL engine.

Which table each grouping reads, so that totals always equal the sum of the groups: time, conversation,
service and provider read `calls` alone (`measures.cost.call_measures`); model and iteration type read
`calls LEFT JOIN iterations` (`measures.cost.iteration_measures`). Buckets are the local hour/day/week in
the report's zone, from `calls.start_ms`; months are local days rolled up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, select

from compactobs._types import SQLExpr, SQLLabel
from compactobs.reports.measures.cost import add_record, call_measures, iteration_measures
from compactobs.reports.measures.groups import ITERATION_LEVEL, group_key, group_values, label_of
from compactobs.reports.model import Filters
from compactobs.reports.sources.base import Groups
from compactobs.reports.sources.sql_reading import bucket_source
from compactobs.reports.times import TIME_UNITS, Buckets, bucket_label, local_bucket
from compactobs.store.models import calls, iterations

__all__ = ["aggregate_calls", "group_keys"]


def group_keys(by: Sequence[str]) -> list[SQLLabel]:
    """The non-time group keys over `calls` and `iterations`, labelled `k_<json key>`."""
    return [group_key(name, calls, iterations).label(label_of(name)) for name in by if name not in TIME_UNITS]


def aggregate_calls(
    connection: Connection,
    filters: Filters,
    by: Sequence[str],
    buckets: Buckets | None,
    conditions: Sequence[ColumnElement[bool]] = (),
    with_model: bool = False,
    result: Groups | None = None,
) -> Groups:
    """One GROUP BY over the window's rows in `calls` (and `iterations`), never the rollups, added into
    `result`: {group key values (in `by` order): measures}. `by` takes the groupings of `measures.groups`
    (variants too); `conditions` narrow the calls. Rows of buckets that share a label (the hour repeated
    when clocks go back) are merged. `with_model`: the call's model (response, else request) is one more
    key, last."""
    iteration_level = any(name in ITERATION_LEVEL for name in by)
    keys = group_keys(by)
    if with_model:
        keys.append(func.coalesce(calls.c.response_model, calls.c.request_model).label("k_call_model"))
    measures = iteration_measures() if iteration_level else call_measures()
    where = [*filters.call_conditions(), *conditions]
    result = {} if result is None else result
    unit = buckets.unit if buckets is not None else None
    with contextlib.ExitStack() as stack:
        source: Any = calls
        group: list[SQLExpr] = list(keys)
        # The few unpriced calls are found by a scan (no index on `priced`); on SQLite, so is every call
        # joined to its iterations: reading calls in start_ms order (`bucket_source`) fetches each row at
        # random, and the model key needs a sort anyway. Their local bucket is computed per row
        # (`local_bucket`: the same local hours, days, weeks; months from days).
        per_row = with_model or (iteration_level and connection.dialect.name == "sqlite")
        if buckets is not None and per_row:
            sql_unit: Any = "day" if buckets.unit == "month" else buckets.unit
            lo, hi = buckets.starts[0], buckets.end
            group.insert(0, local_bucket(calls.c.start_ms, sql_unit, filters.tz, lo, hi).label("t_local"))
        elif buckets is not None:
            source, bucket = stack.enter_context(bucket_source(connection, buckets, calls.c.start_ms, calls))
            group.insert(0, bucket.label("t_bucket"))
        if iteration_level:
            source = source.outerjoin(iterations, iterations.c.call_id == calls.c.call_id)
        statement = select(*group, *measures).select_from(source).where(*where)
        if group:
            statement = statement.group_by(*group)
        labels = buckets.labels if buckets is not None else []

        def time_label(record: Mapping[Any, Any]) -> str:
            if per_row:
                assert unit is not None
                return bucket_label(unit, int(record["t_local"]))
            return labels[int(record["t_bucket"]) - 1]

        for record in connection.execute(statement).mappings():
            add_record(result, group_values(record, by, time_label, with_model), record)
    return result
