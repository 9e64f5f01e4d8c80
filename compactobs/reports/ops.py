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
  h = (n - 1) p, and equals x[floor h] + (x[ceil h] - x[floor h]) (h - floor h), as PostgreSQL's
  `percentile_cont` computes it. The SQL store finds the two values around each position without sorting
  every value (`sources/sql_anomalies_ops.py`) and interpolates them with that formula, on either engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine

from compactobs.reports.model import ColumnKind, Filters, Report
from compactobs.reports.sources import Source, as_source
from compactobs.reports.sources.base import PERCENTILES
from compactobs.reports.sources.sql_anomalies_ops import failed_call

if TYPE_CHECKING:
    from compactobs._types import SQLValue

# `failed_call` (a call that ended with an error: the report's and the dashboards' one definition) is the
# SQL store's, named here for the dashboards.
__all__ = ["PERCENTILES", "failed_call", "ops_report"]

DEFINITIONS: Final = (
    "latency = duration of successful calls (retries and back-off included); TTFT = time to first chunk of "
    "successful streamed calls; milliseconds",
    "percentiles: linear interpolation between closest ranks (PostgreSQL percentile_cont): "
    "x[floor h] + (x[ceil h] - x[floor h]) * (h - floor h), h = (n - 1) * p over the sorted values",
)


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


def ops_report(source: Engine | Source, filters: Filters) -> Report:
    """The `report ops` Report: one row per model (totals: every model), and a section of errors by type."""
    by_model, errors, latency_by_model, latency_all, ttft_by_model, ttft_all = as_source(source).ops_figures(
        filters
    )

    def row(
        key: str | None,
        n: int,
        errs: SQLValue,
        retried: SQLValue,
        retries: SQLValue,
        lat: Sequence[float | None] | None,
        first: Sequence[float | None] | None,
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
    kinds: dict[str, ColumnKind] = {"model": "key", "error_rate": "ratio"}
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
