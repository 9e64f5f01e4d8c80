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

from sqlalchemy import Engine, Integer, and_, case, cast, func, literal, literal_column, or_, select
from sqlalchemy.sql.elements import ColumnElement

from compactobs.reports._common import Filters, Report
from compactobs.store.models import calls

__all__ = ["PERCENTILES", "interpolate", "ops_report", "percentiles"]

PERCENTILES: Final = (0.5, 0.95, 0.99)
_TOTAL: Final = object()
"""The group key of the all-models percentiles."""

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


def percentiles(
    engine: Engine,
    value: ColumnElement[Any],
    group: ColumnElement[Any] | None,
    conditions: Sequence[ColumnElement[bool]],
    ps: Sequence[float] = PERCENTILES,
) -> dict[Any, tuple[float, ...]]:
    """{group value: (percentile for each p)} over the non-NULL `value`s of the calls `conditions` select;
    the key is `_TOTAL` when `group` is None. Groups without a value are absent."""
    if engine.dialect.name == "postgresql":
        return _percentiles_postgresql(engine, value, group, conditions, ps)
    return _percentiles_ranked(engine, value, group, conditions, ps)


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
    with engine.connect() as connection:
        for row in connection.execute(query):
            key = row[0] if group is not None else _TOTAL
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
) -> dict[Any, tuple[float, ...]]:
    key = (group if group is not None else literal(0)).label("key")
    partition = [group] if group is not None else []
    ranked = (
        select(
            key,
            value.label("v"),
            (func.row_number().over(partition_by=partition, order_by=value) - 1).label("r"),
            func.count().over(partition_by=partition).label("n"),
        )
        .where(value.is_not(None), *conditions)
        .subquery("ranked")
    )
    r = ranked.c
    # The ranks each percentile needs: floor(h) and floor(h) + 1 (a superset of ceil(h)). CAST truncates,
    # which is floor for h >= 0.
    near = [
        and_(
            r.r >= cast((r.n - 1) * p, Integer),
            r.r <= cast((r.n - 1) * p, Integer) + 1,
        )
        for p in ps
    ]
    query = select(r.key, r.n, r.r, r.v).where(or_(*near))
    found: dict[Any, tuple[int, dict[int, float]]] = {}
    with engine.connect() as connection:
        for group_key, n, rank, v in connection.execute(query):
            entry = found.setdefault(group_key if group is not None else _TOTAL, (int(n), {}))
            entry[1][int(rank)] = float(v)
    return {k: tuple(interpolate(values, n, p) for p in ps) for k, (n, values) in found.items()}


def _model() -> ColumnElement[Any]:
    c = calls.c
    # A literal, not a bound parameter: PostgreSQL must see the GROUP BY expression as the selected one.
    return func.coalesce(c.request_model, c.response_model, literal_column("'(unknown)'"))


def _failed() -> ColumnElement[bool]:
    c = calls.c
    return or_(c.status == "ERROR", c.error_type.is_not(None))


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


def ops_report(engine: Engine, filters: Filters) -> Report:
    """The `report ops` Report: one row per model (totals: every model), and a section of errors by type."""
    c = calls.c
    conditions = filters.call_conditions()
    model = _model()
    failed = _failed()
    ok = ~failed
    latency = case((ok, c.duration_ms))
    ttft = case((and_(ok, c.ttft_ms.is_not(None)), c.ttft_ms))
    counts = [
        func.count(),
        func.sum(case((failed, 1), else_=0)),
        func.sum(case((c.attempts > 1, 1), else_=0)),
        func.sum(func.coalesce(c.attempts, 1) - 1),
    ]
    with engine.connect() as connection:
        by_model = connection.execute(
            select(model, *counts).where(*conditions).group_by(model).order_by(model)
        ).all()
        total = connection.execute(select(*counts).where(*conditions)).one()
        error_type = func.coalesce(c.error_type, literal_column("'unknown'"))
        errors = connection.execute(
            select(error_type, func.count(), func.sum(func.coalesce(c.attempts, 1) - 1))
            .where(failed, *conditions)
            .group_by(error_type)
            .order_by(func.count().desc(), error_type)
        ).all()
    latency_by_model = percentiles(engine, latency, model, conditions)
    ttft_by_model = percentiles(engine, ttft, model, conditions)
    latency_all = percentiles(engine, latency, None, conditions).get(_TOTAL)
    ttft_all = percentiles(engine, ttft, None, conditions).get(_TOTAL)

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
    n_total = int(total[0] or 0)
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
    )
