"""The SQL store (SQLite, PostgreSQL) as the source of `report ops`, `report conversation`, `report call` and
`report anomalies` (`base.Source`): the queries, and the percentiles.

Percentiles: exact, from the same statements on both engines: the values are counted per order-keeping
bucket in one grouped pass, and only the values of the buckets that hold the ranks wanted come back, to be
interpolated with the one formula (`base.interpolate`, PostgreSQL's `percentile_cont`'s) in the
same floating-point arithmetic, so both give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import (
    BigInteger,
    Engine,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from compactobs._types import SQLExpr, SQLRow, SQLValue
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
from compactobs.reports.measures.cost import iteration_cost
from compactobs.reports.measures.groups import group_key
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
from compactobs.store.models import calls, iterations

if TYPE_CHECKING:
    from compactobs.rules import Budgets

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

    def conversation_calls(self, filters: Filters, conversation_id: str) -> Iterator[SQLValue]:
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

    def conversation_type_costs(
        self, filters: Filters, conversation_id: str
    ) -> list[tuple[str, SQLValue, SQLValue]]:
        kind = group_key("iteration-type", calls, iterations)
        query = (
            select(calls.c.call_id, kind, iteration_cost(calls, iterations))
            .select_from(calls.outerjoin(iterations, iterations.c.call_id == calls.c.call_id))
            .where(calls.c.conversation_id == conversation_id, *filters.call_conditions())
            .group_by(calls.c.call_id, kind)
        )
        with reading(self.engine) as connection:
            return [(row[0], row[1], row[2]) for row in connection.execute(query)]

    def call_with_iterations(self, reference: str) -> tuple[SQLRow, list[SQLRow]]:
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

    def compaction_rows(self, thresholds: Thresholds) -> Iterable[Sequence[SQLValue]]:
        # Streamed: memory follows the candidates, not the calls.
        with reading(self.engine) as connection:
            result = connection.execution_options(stream_results=True, yield_per=2000).execute(
                compaction_records(self.conditions, thresholds)
            )
            yield from result

    def budget_totals(self, budgets: Budgets | None) -> Iterable[Sequence[SQLValue]]:
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

    def unpriced_groups(self) -> Iterable[Sequence[SQLValue]]:
        with reading(self.engine) as connection:
            return list(connection.execute(unpriced_statement(self.conditions)).all())

    def unpriced_sample(self, model: str) -> Sequence[str]:
        with reading(self.engine) as connection:
            return list(connection.execute(unpriced_sample_statement(self.conditions, model)).scalars())

    def error_hours(self, thresholds: Thresholds) -> Iterable[Sequence[SQLValue]]:
        with reading(self.engine) as connection:
            return list(connection.execute(error_hours_statement(self.conditions, thresholds)))

    def error_sample(self, start_ms: int) -> Sequence[str]:
        with reading(self.engine) as connection:
            return list(connection.execute(error_sample_statement(self.conditions, start_ms)).scalars())


# -- ops: percentiles ---------------------------------------------------------------------------------------
#
# Exact percentiles without sorting every value: one grouped pass counts the values per (group, bucket),
# where a bucket is an order-keeping integer of the value (`_bucket`: three significant digits); the counts
# say which bucket holds each rank wanted; a second pass fetches the values of those buckets only, and
# they are sorted here. Both engines run the same statements, and the percentile is interpolated here with
# the one formula (`base.interpolate`). Before, PostgreSQL's `percentile_cont` and SQLite's
# ROW_NUMBER ranks sorted every value once per group set and measure. `report ops` at 1M calls, old and new
# taking turns in one process on a loaded 2-core machine: SQLite 22-24 s -> 9-11 s, PostgreSQL 7.8-8.3 s ->
# 4.3-4.9 s (about 20 -> 10 and 15 -> 8.5 times a full scan of `calls`).


def _ranks(n: int, ps: Sequence[float]) -> set[int]:
    """The 0-based ranks the percentiles of n values interpolate between."""
    out: set[int] = set()
    for p in ps:
        position = (n - 1) * p
        out.update((math.floor(position), math.ceil(position)))
    return out


_DECADES: Final = 13
"""Values up to 10^15 get buckets of their own three leading digits; larger ones share the last bucket."""


def _bucket(value: SQLExpr) -> SQLExpr:
    """An integer that never decreases as `value` grows: below 0 one bucket; [0, 100) one per unit; then per
    decade [10^(k+2), 10^(k+3)) the value's three leading digits, offset so that decades do not overlap
    (2000 (k + 1) + [100, 1000]). Only the order matters, so an engine's rounding of CAST (SQLite truncates,
    PostgreSQL rounds) changes nothing: the counts and the fetch use the same expression. Every number is a
    literal, so PostgreSQL matches the expression in GROUP BY."""
    whens: list[tuple[ColumnElement[bool], SQLExpr]] = [
        (value < literal_column("0"), literal_column("-1")),
        (value < literal_column("100"), cast(value, BigInteger)),
    ]
    for k in range(_DECADES):
        whens.append(
            (
                value < literal_column(f"1e{k + 3}"),
                literal_column(str(2000 * (k + 1))) + cast(value / literal_column(f"1e{k}"), BigInteger),
            )
        )
    return case(*whens, else_=literal_column(str(2000 * (_DECADES + 1))))


class _Histogram:
    """Counts of a value per (group, bucket), then the values of the buckets that hold the ranks wanted: the
    percentiles of each group and of every group together."""

    def __init__(self, ps: Sequence[float]) -> None:
        self.ps = ps
        self.counts: dict[SQLValue, dict[int, int]] = {}
        self._values: dict[tuple[SQLValue, int], list[float]] = {}

    def add(self, group: SQLValue, bucket: int, n: int) -> None:
        if bucket is not None and n:
            by_bucket = self.counts.setdefault(group, {})
            by_bucket[int(bucket)] = by_bucket.get(int(bucket), 0) + int(n)

    def _total(self) -> dict[int, int]:
        total: dict[int, int] = {}
        for by_bucket in self.counts.values():
            for bucket, n in by_bucket.items():
                total[bucket] = total.get(bucket, 0) + n
        return total

    @staticmethod
    def _locate(by_bucket: dict[int, int], ranks: set[int]) -> dict[int, tuple[int, int]]:
        """{rank: (bucket, rank inside the bucket)}."""
        found: dict[int, tuple[int, int]] = {}
        wanted = sorted(ranks)
        before = 0
        for bucket in sorted(by_bucket):
            n = by_bucket[bucket]
            while wanted and wanted[0] < before + n:
                rank = wanted.pop(0)
                found[rank] = (bucket, rank - before)
            before += n
        return found

    def wanted(self) -> set[int]:
        """The buckets whose values must be fetched."""
        out: set[int] = set()
        for by_bucket in [*self.counts.values(), self._total()]:
            n = sum(by_bucket.values())
            out.update(bucket for bucket, _ in self._locate(by_bucket, _ranks(n, self.ps)).values())
        return out

    def keep(self, group: SQLValue, bucket: int, value: float) -> None:
        """A fetched value (of a wanted bucket)."""
        if value is not None and bucket is not None:
            self._values.setdefault((group, int(bucket)), []).append(float(value))

    def _percentiles(self, by_bucket: dict[int, int], values_of: Any) -> tuple[float, ...]:
        n = sum(by_bucket.values())
        sorted_of: dict[int, list[float]] = {}
        at: dict[int, float] = {}
        for rank, (bucket, inside) in self._locate(by_bucket, _ranks(n, self.ps)).items():
            if bucket not in sorted_of:
                sorted_of[bucket] = sorted(values_of(bucket))
            at[rank] = sorted_of[bucket][inside]
        return tuple(interpolate(at, n, p) for p in self.ps)

    def by_group(self) -> dict[SQLValue, tuple[float, ...]]:
        return {
            group: self._percentiles(by_bucket, lambda bucket, group=group: self._values[(group, bucket)])
            for group, by_bucket in self.counts.items()
        }

    def total(self) -> tuple[float, ...] | None:
        if not self.counts:
            return None

        def values_of(bucket: int) -> list[float]:
            return [v for group in self.counts for v in self._values.get((group, bucket), ())]

        return self._percentiles(self._total(), values_of)


def percentiles(
    engine: Engine,
    value: SQLExpr,
    group: SQLExpr | None,
    conditions: Sequence[ColumnElement[bool]],
    ps: Sequence[float] = PERCENTILES,
) -> dict[SQLValue, tuple[float, ...]]:
    """{group value: (percentile for each p)} over the non-NULL `value`s of the calls `conditions` select;
    with `group` None, one entry keyed `TOTAL`. Groups without a value are absent."""
    by_group, total = percentiles_with_total(engine, value, group, conditions, ps)
    if group is None:
        return {} if total is None else {TOTAL: total}
    return by_group


def percentiles_with_total(
    engine: Engine,
    value: SQLExpr,
    group: SQLExpr | None,
    conditions: Sequence[ColumnElement[bool]],
    ps: Sequence[float] = PERCENTILES,
) -> tuple[dict[SQLValue, tuple[float, ...]], tuple[float, ...] | None]:
    """(percentiles by group, percentiles over every group): two passes over the calls, see above."""
    key = (group if group is not None else literal_column("0")).label("key")
    histogram = _Histogram(ps)
    selected = [value.is_not(None), *conditions]
    with reading(engine, snapshot=True) as connection:
        inner = select(key, _bucket(value).label("bucket")).where(*selected).subquery()
        for k, bucket, n in connection.execute(
            select(inner.c.key, inner.c.bucket, func.count()).group_by(inner.c.key, inner.c.bucket)
        ):
            histogram.add(k, bucket, n)
        if not histogram.counts:
            return {}, None
        bucket = _bucket(value)
        for k, bucket_value, v in connection.execute(
            select(key, bucket, value).where(*selected, bucket.in_(sorted(histogram.wanted())))
        ):
            histogram.keep(k, bucket_value, v)
    return (histogram.by_group() if group is not None else {}), histogram.total()


def _model() -> SQLExpr:
    c = calls.c
    # A literal, not a bound parameter: PostgreSQL must see the GROUP BY expression as the selected one.
    return func.coalesce(c.request_model, c.response_model, literal_column("'(unknown)'"))


def _failed() -> ColumnElement[bool]:
    c = calls.c
    return or_(c.status == "ERROR", c.error_type.is_not(None))


failed_call = _failed
"""A call that ended with an error (the report's and the dashboards' one definition)."""


def _ops_figures(engine: Engine, filters: Filters) -> OpsFigures:
    """Three passes over the calls: the counts by model and error type with the latency histogram, the TTFT
    histogram, then the values of the buckets that hold the percentiles' ranks."""
    c = calls.c
    conditions = filters.call_conditions()
    failed = _failed()
    ok = ~failed
    latency, ttft = _Histogram(PERCENTILES), _Histogram(PERCENTILES)
    # Grouped by the columns of a subquery: its expressions hold bound parameters, which PostgreSQL would not
    # match between the select list and GROUP BY.
    error_type = func.coalesce(c.error_type, literal_column("'unknown'"))
    latency_bucket, ttft_bucket = _bucket(c.duration_ms), _bucket(c.ttft_ms)
    inner = (
        select(
            _model().label("model"),
            case((failed, error_type)).label("error"),
            case((and_(ok, c.duration_ms.is_not(None)), latency_bucket)).label("bucket"),
            c.attempts,
        )
        .where(*conditions)
        .subquery()
    )
    i = inner.c
    counted = (
        select(
            i.model,
            i.error,
            i.bucket,
            func.count(),
            func.sum(case((i.attempts > 1, 1), else_=0)),
            func.sum(func.coalesce(i.attempts, 1) - 1),
        )
        .group_by(i.model, i.error, i.bucket)
        .order_by(i.model)
    )
    models: dict[str, list[int]] = {}
    errors_of: dict[str, list[int]] = {}
    with reading(engine, snapshot=True) as connection:
        for model, error, bucket, n, retried, retries in connection.execute(counted):
            figures = models.setdefault(model, [0, 0, 0, 0])
            figures[0] += n
            figures[2] += int(retried or 0)
            figures[3] += int(retries or 0)
            if error is not None:
                figures[1] += n
                kind = errors_of.setdefault(error, [0, 0])
                kind[0] += n
                kind[1] += int(retries or 0)
            latency.add(model, bucket, n)
        streamed = (
            select(_model().label("model"), ttft_bucket.label("bucket"))
            .where(*conditions, ok, c.ttft_ms.is_not(None))
            .subquery()
        )
        for model, bucket, n in connection.execute(
            select(streamed.c.model, streamed.c.bucket, func.count()).group_by(
                streamed.c.model, streamed.c.bucket
            )
        ):
            ttft.add(model, bucket, n)
        wanted_latency, wanted_ttft = sorted(latency.wanted()), sorted(ttft.wanted())
        if wanted_latency or wanted_ttft:
            fetched = select(_model(), c.duration_ms, latency_bucket, c.ttft_ms, ttft_bucket).where(
                *conditions, ok, or_(latency_bucket.in_(wanted_latency), ttft_bucket.in_(wanted_ttft))
            )
            keep_latency, keep_ttft = set(wanted_latency), set(wanted_ttft)
            for model, duration, d_bucket, first, t_bucket in connection.execute(fetched):
                if d_bucket in keep_latency:
                    latency.keep(model, d_bucket, duration)
                if first is not None and t_bucket in keep_ttft:
                    ttft.keep(model, t_bucket, first)
        errors = [(kind, n, retries) for kind, (n, retries) in errors_of.items()]
        if len(errors) > 1:
            order = _collation_order(connection, list(errors_of))
            errors.sort(key=lambda e: (-e[1], order[e[0]]))
    by_model = [(model, *figures) for model, figures in models.items()]
    return by_model, errors, latency.by_group(), latency.total(), ttft.by_group(), ttft.total()


def _collation_order(connection: Any, texts: list[str]) -> dict[str, int]:
    """Each text's place in the database's own order of text (its collation), as ORDER BY sorts the
    column: for ties, without another pass over the calls."""
    listed = union_all(*(select(literal(text, String).label("t")) for text in texts)).subquery()
    ordered = connection.execute(select(listed.c.t).order_by(listed.c.t)).scalars()
    return {text: place for place, text in enumerate(ordered)}
