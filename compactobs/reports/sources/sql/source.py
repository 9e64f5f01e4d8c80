"""The SQL store (SQLite, PostgreSQL) as a report `Source`: whole clean slots from the rollups, the rest raw.

Reports filtered or grouped by conversation, or grouped by provider, read `calls` only (the rollups have
neither: `measures.groups.CALLS_ONLY`); otherwise `rollup.plan` says which slots of the window the rollups
answer and which part `calls` does (see `sources.sql.rollup`). The unpriced calls' own sums come from a
second pass over just those calls, in the same snapshot, and only when there are some.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, false, func, select

from compactobs.reports.measures.cache import SUMMED as CACHE_SUMMED
from compactobs.reports.measures.cache import add_record as add_cache
from compactobs.reports.measures.cost import SUMMED as COST_SUMMED
from compactobs.reports.measures.cost import add_record as add_cost
from compactobs.reports.measures.cost import source_cost_measures
from compactobs.reports.measures.groups import ITERATION_LEVEL, calls_only
from compactobs.reports.model import Filters
from compactobs.reports.sources.base import DataStamp, Groups
from compactobs.reports.sources.sql import rollup, tune
from compactobs.reports.sources.sql.cache import cache_groups
from compactobs.reports.sources.sql.cost import aggregate_calls
from compactobs.reports.sources.sql_anomalies_ops import SqlAnomaliesOps
from compactobs.reports.sources.sql_reading import reading
from compactobs.reports.times import TIME_UNITS, Buckets
from compactobs.store.models import calls

__all__ = ["SqlSource"]


class SqlSource(SqlAnomaliesOps):
    """A report `Source` over a SQL store's engine (read only, but for refreshing the rollups)."""

    def data_range(self, filters: Filters) -> tuple[int, int] | None:
        """(first, last) start_ms of the calls in the window (two index lookups), None when there is none."""
        conditions = []
        if filters.since_ms is not None:
            conditions.append(calls.c.start_ms >= filters.since_ms)
        if filters.until_ms is not None:
            conditions.append(calls.c.start_ms < filters.until_ms)
        lo = select(func.min(calls.c.start_ms)).where(*conditions).scalar_subquery()
        hi = select(func.max(calls.c.start_ms)).where(*conditions).scalar_subquery()
        with self.engine.connect() as connection:
            first, last = connection.execute(select(lo, hi)).one()
        if first is None or last is None:
            return None
        return int(first), int(last)

    def data_stamp(self) -> DataStamp:
        """(calls, first, last start_ms): a count and two index lookups, each its own subquery (SQLite
        answers min and max from the index only when each is alone)."""
        count = select(func.count()).select_from(calls).scalar_subquery()
        lo = select(func.min(calls.c.start_ms)).scalar_subquery()
        hi = select(func.max(calls.c.start_ms)).scalar_subquery()
        with self.engine.connect() as connection:
            n, first, last = connection.execute(select(count, lo, hi)).one()
        return int(n), None if first is None else int(first), None if last is None else int(last)

    def refresh(self, filters: Filters, by: Sequence[str]) -> None:
        """Refresh the rollups when they could answer the report (`rollup.try_refresh`)."""
        if not calls_only(by) and not filters.conversations:
            rollup.try_refresh(self.engine)

    def cost_groups(
        self, filters: Filters, by: Sequence[str], buckets: Buckets | None
    ) -> tuple[Groups, Groups]:
        with reading(self.engine, snapshot=True) as connection:
            time_span = (buckets.starts[0], buckets.end) if buckets is not None else None
            split = None if calls_only(by) else rollup.plan(connection, filters, time_span)
            everything = _cost(connection, filters, by, buckets, split)
            if not any(row["unpriced_calls"] for row in everything.values()):
                return everything, {}
            # Rare, so a second pass over just those calls, rather than a priced flag in every group (which
            # costs SQLite a sort of every row).
            unpriced = _cost(connection, filters, by, buckets, split, unpriced_only=True)
            return everything, unpriced

    def cache_groups(
        self, filters: Filters, by: Sequence[str], span: tuple[int, int], now_ms: int
    ) -> tuple[Groups, Groups]:
        use_rollups = not calls_only(by) and not filters.conversations
        with reading(self.engine, snapshot=True) as connection:
            timed = any(name in TIME_UNITS for name in by)
            split = rollup.plan(connection, filters, span if timed else None) if use_rollups else None
            if split is None:
                merged = cache_groups(connection, filters, by, span, now_ms)
            else:
                # Whole clean slots from the rollups; the rest, and the writes whose waste depends on `now`,
                # from `calls`.
                merged = cache_groups(connection, filters, by, span, now_ms, [split.raw_with_open()])
                for group, record in rollup.read(connection, "cache", filters, split, by, span, CACHE_SUMMED):
                    add_cache(merged, group, record)
            unpriced: Groups = {}
            if any(row["unpriced_calls"] for row in merged.values()):
                unpriced = cache_groups(connection, filters, by, span, now_ms, [calls.c.priced == false()])
            return merged, unpriced

    def tune_rows(self, filters: Filters) -> tuple[list[Any], list[Any]]:
        return tune.tune_rows(self.engine, filters)

    def source_cost_groups(self, filters: Filters) -> list[dict[str, Any]]:
        query = (
            select(calls.c.service_name.label("service"), *source_cost_measures(calls))
            .where(calls.c.source_cost_usd.is_not(None), *filters.call_conditions())
            .group_by(calls.c.service_name)
            .order_by(calls.c.service_name)
        )
        with reading(self.engine) as connection:
            return [dict(row._mapping) for row in connection.execute(query)]


def _cost(
    connection: Connection,
    filters: Filters,
    by: Sequence[str],
    buckets: Buckets | None,
    split: rollup.Split | None,
    unpriced_only: bool = False,
) -> Groups:
    """The window's cost sums by group (with `unpriced_only`: the unpriced calls', by group and call model):
    whole clean slots from the rollups, the rest from `calls`, as `split` says (None: all from `calls`)."""
    raw_conditions: list[ColumnElement[bool]] = [calls.c.priced == false()] if unpriced_only else []
    span = (buckets.starts[0], buckets.end) if buckets is not None else None
    if split is None:
        return aggregate_calls(connection, filters, by, buckets, raw_conditions, unpriced_only)
    result: Groups = {}
    if split.raw_condition is not None:
        aggregate_calls(
            connection, filters, by, buckets, [*raw_conditions, split.raw_condition], unpriced_only, result
        )
    level = "iteration" if any(name in ITERATION_LEVEL for name in by) else "call"
    for group, record in rollup.read(
        connection, level, filters, split, by, span, COST_SUMMED, unpriced_only, unpriced_only
    ):
        add_cost(result, group, record)
    return result
