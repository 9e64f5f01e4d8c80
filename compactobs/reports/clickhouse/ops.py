"""`report ops` on ClickHouse: the counts by model and error type, and the ranked values the percentiles
are interpolated from (`compactobs.reports.ops.interpolate`: the same formula, in the same arithmetic)."""

from __future__ import annotations

from typing import Any, Final

from compactobs.reports._common import Filters
from compactobs.reports.clickhouse import spans
from compactobs.reports.clickhouse.source import ClickHouseSource
from compactobs.reports.ops import PERCENTILES, TOTAL, OpsFigures, Percentiles, interpolate

__all__ = ["ops_figures"]

_MODEL: Final = "coalesce(c.request_model, c.response_model, '(unknown)')"
_FAILED: Final = "(c.status = 'ERROR' OR c.error_type IS NOT NULL)"


def _calls(source: ClickHouseSource, filters: Filters, *extra: str) -> str:
    where = [*spans.call_conditions(filters, "c."), *extra]
    relation = spans.calls_of(source, filters)
    return f"{relation} AS c" + (" WHERE " + " AND ".join(where) if where else "")


def _percentiles(source: ClickHouseSource, filters: Filters, value: str, group: str | None) -> Percentiles:
    """{group (or TOTAL): percentiles} of the non-NULL `value`s of the successful calls: each group's values
    sorted by ClickHouse, which returns only those at the ranks the percentiles need."""
    ps = ", ".join(repr(p) for p in PERCENTILES)
    key = f"{group} AS key, " if group else ""
    ranks = (
        f"arrayDistinct(arrayFlatten(arrayMap(p -> [toUInt64(floor((n - 1) * p)), "
        f"toUInt64(ceil((n - 1) * p))], [{ps}])))"
    )
    inner = (
        f"SELECT {key}count() AS n, arraySort(groupArray(c.{value})) AS sorted "
        f"FROM {_calls(source, filters, f'c.{value} IS NOT NULL', f'NOT {_FAILED}')}"
        + (" GROUP BY key" if group else "")
    )
    sql = (
        f"SELECT {'key, ' if group else ''}n, {ranks} AS ranks, arrayMap(r -> sorted[r + 1], ranks) AS found "
        f"FROM ({inner}) WHERE n > 0"
    )
    out: Percentiles = {}
    for record in source.rows(sql):
        n = int(record["n"])
        values = dict(zip(record["ranks"], record["found"], strict=True))
        out[record["key"] if group else TOTAL] = tuple(interpolate(values, n, p) for p in PERCENTILES)
    return out


def ops_figures(source: ClickHouseSource, filters: Filters) -> OpsFigures:
    """What `ops._figures` gives on the store, from the spans table."""
    counts = (
        f"SELECT {_MODEL} AS model, count() AS n, countIf({_FAILED}) AS errors, countIf(c.attempts > 1) AS "
        f"retried, sum(coalesce(c.attempts, 1) - 1) AS retries FROM {_calls(source, filters)} "
        "GROUP BY model ORDER BY model"
    )
    by_model = [tuple(r.values()) for r in source.rows(counts)]
    errors_sql = (
        "SELECT coalesce(c.error_type, 'unknown') AS error_type, count() AS n, "
        f"sum(coalesce(c.attempts, 1) - 1) AS retries FROM {_calls(source, filters, _FAILED)} "
        "GROUP BY error_type ORDER BY n DESC, error_type"
    )
    errors = [tuple(r.values()) for r in source.rows(errors_sql)]
    results: list[Any] = []
    for value in ("duration_ms", "ttft_ms"):
        by_group = _percentiles(source, filters, value, _MODEL)
        total = _percentiles(source, filters, value, None).get(TOTAL)
        results += [by_group, total]
    return by_model, errors, results[0], results[1], results[2], results[3]
