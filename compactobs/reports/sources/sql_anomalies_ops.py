"""The SQL store (SQLite, PostgreSQL) as the source of `report ops`, `report conversation`, `report call` and
`report anomalies` (`base.Source`): the queries, and the percentiles each engine
computes its own way.

Percentiles: PostgreSQL computes them with `percentile_cont`; SQLite, which has none, ranks the values with
ROW_NUMBER in a window and only the two rows around each position come back, to be interpolated with the
same formula (`base.interpolate`) in the same floating-point arithmetic, so both give the same
numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Engine, case, func, literal, literal_column, or_, select
from sqlalchemy.sql.elements import ColumnElement

from compactobs.reports.measures.anomalies import (
    ID_CHUNK,
    OverBudget,
    Thresholds,
    budget_crossings_statement,
    budget_totals_statement,
    compaction_records,
    error_hours_statement,
    error_sample_statement,
    first_crossings,
    unpriced_sample_statement,
    unpriced_statement,
)
from compactobs.reports.model import Filters
from compactobs.reports.sources.base import (
    CONVERSATION_FIELDS,
    PERCENTILES,
    OpsFigures,
    interpolate,
    unknown_call,
    unknown_conversation,
)
from compactobs.reports.sources.sql_reading import reading
from compactobs.rules import Budgets
from compactobs.store.models import calls, iterations

__all__ = [
    "TOTAL",
    "SqlAnomaliesOps",
    "SqlAnomalyData",
    "failed_call",
    "percentiles",
    "percentiles_with_total",
]

TOTAL: Final = "(total)"
"""The key of the overall percentiles in `percentiles(..., group=None)`."""


class SqlAnomaliesOps:
    """`report ops`, `conversation`, `call` and `anomalies` over the SQL store's Engine: the part of
    `sources.sql.SqlSource` those reports read."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ops_figures(self, filters: Filters) -> OpsFigures:
        return _ops_figures(self.engine, filters)

    def conversation_calls(self, filters: Filters, conversation_id: str) -> Iterator[Any]:
        c = calls.c
        with reading(self.engine) as connection:
            known = connection.execute(
                select(c.call_id).where(c.conversation_id == conversation_id).limit(1)
            ).first()
            if known is None:
                raise unknown_conversation(conversation_id)
            query = (
                select(*(c[name] for name in CONVERSATION_FIELDS))
                .where(c.conversation_id == conversation_id, *filters.call_conditions())
                .order_by(c.start_ms, c.call_id)
            )
            yield from connection.execute(query)

    def call_with_iterations(self, reference: str) -> tuple[Any, list[Any]]:
        c = calls.c
        with reading(self.engine) as connection:
            found = connection.execute(
                select(calls)
                .where(or_(c.call_id == reference, c.request_id == reference, c.response_id == reference))
                .order_by(c.start_ms, c.call_id)
                .limit(1)
            ).first()
            if found is None:
                raise unknown_call(reference)
            rows = list(
                connection.execute(
                    select(iterations).where(iterations.c.call_id == found.call_id).order_by(iterations.c.idx)
                )
            )
        return found, rows

    def anomaly_data(self, filters: Filters) -> SqlAnomalyData:
        return SqlAnomalyData(self.engine, filters.call_conditions())


# -- anomalies ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SqlAnomalyData:
    """`AnomalyData`: the anomaly kinds' statements (`measures.anomalies`), run on the store, over the
    calls `conditions` select."""

    engine: Engine
    conditions: Sequence[ColumnElement[bool]]
    concurrent: bool = False  # one thread: an in-memory SQLite database is one per thread

    def compaction_rows(self, thresholds: Thresholds) -> Iterable[Sequence[Any]]:
        # Streamed: memory follows the candidates, not the calls.
        with reading(self.engine) as connection:
            result = connection.execution_options(stream_results=True, yield_per=2000).execute(
                compaction_records(self.conditions, thresholds)
            )
            yield from result

    def budget_totals(self, budgets: Budgets | None) -> Iterable[Sequence[Any]]:
        with reading(self.engine) as connection:
            yield from connection.execution_options(stream_results=True, yield_per=2000).execute(
                budget_totals_statement(self.conditions, budgets)
            )

    def budget_crossings(self, over: OverBudget) -> dict[str, Any]:
        # One ordered pass over the calls of the conversations over budget, a chunk of ids at a time (the
        # (conversation_id, start_ms) index gives the order).
        found: dict[str, Any] = {}
        ids = list(over)
        with reading(self.engine) as connection:
            for start in range(0, len(ids), ID_CHUNK):
                statement = budget_crossings_statement(ids[start : start + ID_CHUNK])
                found.update(first_crossings(connection.execute(statement), over))
        return found

    def unpriced_groups(self) -> Iterable[Sequence[Any]]:
        with reading(self.engine) as connection:
            return list(connection.execute(unpriced_statement(self.conditions)).all())

    def unpriced_sample(self, model: str) -> Sequence[str]:
        with reading(self.engine) as connection:
            return list(connection.execute(unpriced_sample_statement(self.conditions, model)).scalars())

    def error_hours(self, thresholds: Thresholds) -> Iterable[Sequence[Any]]:
        with reading(self.engine) as connection:
            return list(connection.execute(error_hours_statement(self.conditions, thresholds)))

    def error_sample(self, start_ms: int) -> Sequence[str]:
        with reading(self.engine) as connection:
            return list(connection.execute(error_sample_statement(self.conditions, start_ms)).scalars())


# -- ops: percentiles ---------------------------------------------------------------------------------------


def _ranks(n: int, ps: Sequence[float]) -> set[int]:
    """The 0-based ranks the percentiles of n values interpolate between."""
    out: set[int] = set()
    for p in ps:
        position = (n - 1) * p
        out.update((math.floor(position), math.ceil(position)))
    return out


def percentiles(
    engine: Engine,
    value: ColumnElement[Any],
    group: ColumnElement[Any] | None,
    conditions: Sequence[ColumnElement[bool]],
    ps: Sequence[float] = PERCENTILES,
) -> dict[Any, tuple[float, ...]]:
    """{group value: (percentile for each p)} over the non-NULL `value`s of the calls `conditions` select;
    with `group` None, one entry keyed `TOTAL`. Groups without a value are absent."""
    if group is None:
        total = percentiles_with_total(engine, value, None, conditions, ps)[1]
        return {} if total is None else {TOTAL: total}
    return percentiles_with_total(engine, value, group, conditions, ps, with_total=False)[0]


def percentiles_with_total(
    engine: Engine,
    value: ColumnElement[Any],
    group: ColumnElement[Any] | None,
    conditions: Sequence[ColumnElement[bool]],
    ps: Sequence[float] = PERCENTILES,
    *,
    with_total: bool = True,
) -> tuple[dict[Any, tuple[float, ...]], tuple[float, ...] | None]:
    """(percentiles by group, percentiles over every group) in as few passes as the database allows."""
    if engine.dialect.name == "postgresql":
        by_group = _percentiles_postgresql(engine, value, group, conditions, ps) if group is not None else {}
        total = (
            _percentiles_postgresql(engine, value, None, conditions, ps).get(TOTAL) if with_total else None
        )
        return by_group, total
    return _percentiles_ranked(engine, value, group, conditions, ps, with_total)


def _percentiles_postgresql(
    engine: Engine,
    value: ColumnElement[Any],
    group: ColumnElement[Any] | None,
    conditions: Sequence[ColumnElement[bool]],
    ps: Sequence[float],
) -> dict[Any, tuple[float, ...]]:
    columns = [func.percentile_cont(literal(p)).within_group(value) for p in ps]
    query = select(*([group] if group is not None else []), *columns).where(value.is_not(None), *conditions)
    if group is not None:
        query = query.group_by(group)
    out: dict[Any, tuple[float, ...]] = {}
    with reading(engine) as connection:
        for row in connection.execute(query):
            key = row[0] if group is not None else TOTAL
            found = row[1:] if group is not None else row
            if found[0] is not None:
                out[key] = tuple(float(v) for v in found)
    return out


def _percentiles_ranked(
    engine: Engine,
    value: ColumnElement[Any],
    group: ColumnElement[Any] | None,
    conditions: Sequence[ColumnElement[bool]],
    ps: Sequence[float],
    with_total: bool,
) -> tuple[dict[Any, tuple[float, ...]], tuple[float, ...] | None]:
    """SQLite: count the values of each group (GROUP BY), rank them with ROW_NUMBER (by group; then
    overall, in a statement of its own, when there is more than one group: two windows in one statement
    sort more slowly than two statements) and fetch only the ranks needed."""
    key = (group if group is not None else literal_column("0")).label("key")
    with reading(engine) as connection:
        counting = select(key, func.count(value)).where(value.is_not(None), *conditions)
        if group is not None:  # (GROUP BY 0 would name a column by its position)
            counting = counting.group_by(group)
        counts = {k: int(n) for k, n in connection.execute(counting) if n}
        if not counts:
            return {}, None
        n_total = sum(counts.values())
        by_group: dict[Any, tuple[float, ...]] = {}
        if group is not None:
            rank = (func.row_number().over(partition_by=group, order_by=value) - 1).label("r")
            ranked = select(key, value.label("v"), rank).where(value.is_not(None), *conditions).subquery()
            r = ranked.c
            # One IN list for every group (a few spare rows come back) is much cheaper for SQLite to test
            # on each ranked row than a condition per group.
            wanted = set().union(*(_ranks(n, ps) for n in counts.values()))
            found: dict[Any, dict[int, float]] = {}
            for k, v, position in connection.execute(select(r.key, r.v, r.r).where(r.r.in_(sorted(wanted)))):
                found.setdefault(k, {})[int(position)] = float(v)
            by_group = {k: tuple(interpolate(found[k], n, p) for p in ps) for k, n in counts.items()}
        if not with_total and group is not None:
            return by_group, None
        if group is not None and len(counts) == 1:
            # One group holds every value: its percentiles are the overall ones.
            return by_group, next(iter(by_group.values()))
        rank = (func.row_number().over(order_by=value) - 1).label("g")
        ranked = select(value.label("v"), rank).where(value.is_not(None), *conditions).subquery()
        r = ranked.c
        everything = {
            int(position): float(v)
            for v, position in connection.execute(
                select(r.v, r.g).where(r.g.in_(sorted(_ranks(n_total, ps))))
            )
        }
    return by_group, tuple(interpolate(everything, n_total, p) for p in ps)


def _model() -> ColumnElement[Any]:
    c = calls.c
    # A literal, not a bound parameter: PostgreSQL must see the GROUP BY expression as the selected one.
    return func.coalesce(c.request_model, c.response_model, literal_column("'(unknown)'"))


def _failed() -> ColumnElement[bool]:
    c = calls.c
    return or_(c.status == "ERROR", c.error_type.is_not(None))


failed_call = _failed
"""A call that ended with an error (the report's and the dashboards' one definition)."""


def _ops_figures(engine: Engine, filters: Filters) -> OpsFigures:
    c = calls.c
    conditions = filters.call_conditions()
    model = _model()
    failed = _failed()
    ok = ~failed
    # The values as plain columns, the successful calls as a condition: SQLite sorts a column faster than
    # a CASE expression.
    succeeded = [*conditions, ok]
    counts = [
        func.count(),
        func.sum(case((failed, 1), else_=0)),
        func.sum(case((c.attempts > 1, 1), else_=0)),
        func.sum(func.coalesce(c.attempts, 1) - 1),
    ]
    with reading(engine) as connection:
        by_model = connection.execute(
            select(model, *counts).where(*conditions).group_by(model).order_by(model)
        ).all()
        error_type = func.coalesce(c.error_type, literal_column("'unknown'"))
        errors = connection.execute(
            select(error_type, func.count(), func.sum(func.coalesce(c.attempts, 1) - 1))
            .where(failed, *conditions)
            .group_by(error_type)
            .order_by(func.count().desc(), error_type)
        ).all()
    latency_by_model, latency_all = percentiles_with_total(engine, c.duration_ms, model, succeeded)
    ttft_by_model, ttft_all = percentiles_with_total(engine, c.ttft_ms, model, succeeded)
    return by_model, errors, latency_by_model, latency_all, ttft_by_model, ttft_all
