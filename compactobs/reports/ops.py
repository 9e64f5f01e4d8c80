"""`report ops`: calls, errors by type, retries, and latency and time-to-first-token percentiles by model.

Definitions (printed in the report's header):
- model: the requested model (`request_model`, else the response's): a failed call has no response model;
- an error call ended with an error (`status` ERROR or an `error_type`: the HTTP status such as `429`, or
  the exception's class name such as `APIConnectionError`); error rate = error calls / calls;
- retries: HTTP attempts beyond the first (`attempts - 1`), summed; retried calls: calls with more than one;
- latency: the call's duration (all attempts and the SDK's back-off included) of calls that succeeded;
- TTFT: time to the first streamed chunk, of successful streamed calls;
- percentiles: linear interpolation between the closest ranks, as PostgreSQL's `percentile_cont` and
  numpy's default: with the n values sorted x[0] <= ... <= x[n-1], the p-th percentile is at position
  h = (n - 1) p, and equals x[floor h] + (x[ceil h] - x[floor h]) (h - floor h). PostgreSQL computes it
  with `percentile_cont`; SQLite, which has none, ranks the values with ROW_NUMBER in a window and only the
  two rows around each position come back, to be interpolated here with the same formula in the same
  floating-point arithmetic, so both give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Engine, case, func, literal, literal_column, or_, select
from sqlalchemy.sql.elements import ColumnElement

from compactobs.reports.model import ExternalSource, Filters, Report
from compactobs.reports.sources.sql_reading import reading
from compactobs.store.models import calls

__all__ = [
    "PERCENTILES",
    "TOTAL",
    "failed_call",
    "interpolate",
    "ops_report",
    "percentiles",
    "percentiles_with_total",
]

PERCENTILES: Final = (0.5, 0.95, 0.99)
TOTAL: Final = "(total)"
"""The key of the overall percentiles in `percentiles(..., group=None)`."""

DEFINITIONS: Final = (
    "latency = duration of successful calls (retries and back-off included); TTFT = time to first chunk of "
    "successful streamed calls; milliseconds",
    "percentiles: linear interpolation between closest ranks (PostgreSQL percentile_cont): "
    "x[floor h] + (x[ceil h] - x[floor h]) * (h - floor h), h = (n - 1) * p over the sorted values",
)


def interpolate(values: dict[int, float], n: int, p: float) -> float:
    """The p-th percentile from the sorted values at 0-based ranks floor(h) and ceil(h), h = (n - 1) p."""
    position = (n - 1) * p
    low = math.floor(position)
    high = math.ceil(position)
    first = values[low]
    return first + (values[high] - first) * (position - low)


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


COLUMNS: Final = [
    "model",
    "calls",
    "error_calls",
    "error_rate",
    "retried_calls",
    "retries",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "ttft_p99_ms",
]
ERROR_COLUMNS: Final = ["error_type", "calls", "share_of_errors", "share_of_calls", "retries"]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


Percentiles = dict[Any, tuple[float, ...]]
OpsFigures = tuple[Sequence[Sequence[Any]], Sequence[Sequence[Any]], Percentiles, Any, Percentiles, Any]
"""What the report is made of: (by model: (model, calls, error calls, retried calls, retries) in model
order; errors: (error type, calls, retries), most first; latency percentiles by model and over all; TTFT
percentiles by model and over all)."""


def _figures(engine: Engine, filters: Filters) -> OpsFigures:
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


def ops_report(engine: Engine, filters: Filters) -> Report:
    """The `report ops` Report: one row per model (totals: every model), and a section of errors by type."""
    if isinstance(engine, ExternalSource):
        figures: OpsFigures = engine.ops_figures(filters)  # type: ignore[attr-defined]
    else:
        figures = _figures(engine, filters)
    by_model, errors, latency_by_model, latency_all, ttft_by_model, ttft_all = figures

    def row(
        key: str | None, n: int, errs: Any, retried: Any, retries: Any, lat: Any, first: Any
    ) -> dict[str, Any]:
        lat = lat or (None, None, None)
        first = first or (None, None, None)
        out: dict[str, Any] = {} if key is None else {"model": key}
        out.update(
            calls=int(n),
            error_calls=int(errs or 0),
            error_rate=(int(errs or 0) / n) if n else None,
            retried_calls=int(retried or 0),
            retries=int(retries or 0),
        )
        for name, values in (("latency", lat), ("ttft", first)):
            for p, v in zip(("p50", "p95", "p99"), values, strict=True):
                out[f"{name}_{p}_ms"] = _ms(v)
        return out

    rows = [
        row(name, n, errs, retried, retries, latency_by_model.get(name), ttft_by_model.get(name))
        for name, n, errs, retried, retries in by_model
    ]
    # Every call has a model key (COALESCE(..., '(unknown)')): the totals are the models' sums.
    total = [sum(int(r[i] or 0) for r in by_model) for i in range(1, 5)]
    n_total = total[0]
    totals = row(None, n_total, total[1], total[2], total[3], latency_all, ttft_all) if n_total else None
    n_errors = sum(int(e[1]) for e in errors)
    error_rows = [
        {
            "error_type": kind,
            "calls": int(n),
            "share_of_errors": int(n) / n_errors if n_errors else None,
            "share_of_calls": int(n) / n_total if n_total else None,
            "retries": int(retries or 0),
        }
        for kind, n, retries in errors
    ]
    kinds: dict[str, Any] = {"model": "key", "error_rate": "ratio"}
    # Milliseconds are floats: the "int" kind right-aligns them and shows them as they are (one decimal).
    kinds.update({column: "int" for column in COLUMNS if column.endswith("_ms")})
    section = Report(
        name="errors",
        columns=list(ERROR_COLUMNS),
        rows=error_rows,
        kinds={"error_type": "key", "share_of_errors": "ratio", "share_of_calls": "ratio"},
        labels={"error_type": "error type", "share_of_errors": "% of errors", "share_of_calls": "% of calls"},
        title="Errors by type",
        empty_message="No errors.",
    )
    return Report(
        name="ops",
        columns=list(COLUMNS),
        rows=rows,
        totals=totals,
        header=[filters.describe(), *DEFINITIONS],
        extra={
            "errors": [{k: r[k] for k in ERROR_COLUMNS} for r in error_rows],
            "percentiles": list(PERCENTILES),
        },
        kinds=kinds,
        labels={
            "error_calls": "errors",
            "error_rate": "error %",
            "retried_calls": "retried",
            "latency_p50_ms": "p50 ms",
            "latency_p95_ms": "p95 ms",
            "latency_p99_ms": "p99 ms",
            "ttft_p50_ms": "TTFT p50",
            "ttft_p95_ms": "TTFT p95",
            "ttft_p99_ms": "TTFT p99",
        },
        sections=[section] if error_rows else [],
        title="Operations",
        # For a terminal of 120 and of 80 columns: calls, errors and the latency most users watch stay.
        narrow_columns=[
            [
                "model",
                "calls",
                "error_rate",
                "retried_calls",
                "latency_p50_ms",
                "latency_p95_ms",
                "latency_p99_ms",
                "ttft_p50_ms",
                "ttft_p95_ms",
            ],
            ["model", "calls", "error_rate", "latency_p50_ms", "latency_p95_ms", "ttft_p95_ms"],
            ["model", "calls", "error_rate", "latency_p95_ms"],
        ],
    )
