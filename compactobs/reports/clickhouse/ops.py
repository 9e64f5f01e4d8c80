"""`report ops` on ClickHouse: the counts by model and error type, and the ranked values the percentiles
are interpolated from (`compactobs.reports.ops.interpolate`: the same formula, in the same arithmetic),
found through a histogram so the engine never holds every value."""

from __future__ import annotations

from typing import Any, Final

from compactobs.reports._common import Filters
from compactobs.reports.clickhouse import spans
from compactobs.reports.clickhouse.source import ClickHouseSource, quote
from compactobs.reports.ops import PERCENTILES, OpsFigures, Percentiles, interpolate

__all__ = ["ops_figures"]

_MODEL: Final = "coalesce(c.request_model, c.response_model, '(unknown)')"
_FAILED: Final = "(c.status = 'ERROR' OR c.error_type IS NOT NULL)"


def _calls(source: ClickHouseSource, filters: Filters, *extra: str) -> str:
    where = [*spans.call_conditions(filters, "c."), *extra]
    relation = spans.calls_of(source, filters)
    return f"{relation} AS c" + (" WHERE " + " AND ".join(where) if where else "")


_BUCKET_SHIFT: Final = 40
"""A value's bucket: the top 24 bits of its order-preserving 64-bit image (sign, exponent and 12 bits of
mantissa), so a bucket spans 1/4096 of a power of two and the buckets sort as their values do."""


def _bucket(value: str) -> str:
    # IEEE 754 bits sort as the values do once a positive's sign bit is set and a negative's bits flipped.
    bits = f"reinterpretAsUInt64(assumeNotNull({value}))"
    ordered = f"if(assumeNotNull({value}) < 0, bitNot({bits}), bitOr({bits}, bitShiftLeft(toUInt64(1), 63)))"
    return f"bitShiftRight({ordered}, {_BUCKET_SHIFT})"


def _percentiles(source: ClickHouseSource, filters: Filters, value: str) -> tuple[Percentiles, Any]:
    """({model: percentiles}, the percentiles over every model or None) of the non-NULL `value`s of the
    successful calls, exact, in engine memory bounded by a bucket, not by the calls: a histogram of the
    values' buckets (count, lowest, highest) by model, and over every model from it, places each rank the
    percentiles need in its bucket; a rank at its bucket's edge, or in a bucket of one distinct value, is
    read off the histogram, any other from its bucket's values, sorted. A group is (0, model) or (1, '')
    for the total."""
    ps = ", ".join(repr(p) for p in PERCENTILES)
    column = f"c.{value}"
    selected = (f"{column} IS NOT NULL", f"NOT {_FAILED}")
    groups = "[(toUInt8(0), model), (toUInt8(1), '')]"
    by_model = (
        f"SELECT {_MODEL} AS model, {_bucket(column)} AS bucket, count() AS size, min({column}) AS low, "
        f"max({column}) AS high FROM {_calls(source, filters, *selected)} GROUP BY model, bucket"
    )
    histogram = (
        "SELECT g.1 AS total, g.2 AS key, bucket, sum(size) AS size, min(low) AS low, max(high) AS high "
        f"FROM ({by_model}) ARRAY JOIN {groups} AS g GROUP BY total, key, bucket"
    )
    ranks = (
        f"arraySort(arrayDistinct(arrayFlatten(arrayMap(p -> [toUInt64(floor((n - 1) * p)), "
        f"toUInt64(ceil((n - 1) * p))], [{ps}]))))"
    )
    # A rank's bucket is the first whose running count passes it; (rank, bucket, offset in the bucket,
    # the bucket's count, lowest, highest).
    located = (
        f"SELECT total, key, n, arrayMap(r -> (r, arrayFirstIndex(e -> e > r, ends)), {ranks}) AS at, "
        "arrayMap(a -> (a.1, hist[a.2].1, a.1 - (ends[a.2] - hist[a.2].2), hist[a.2].2, hist[a.2].3, "
        "hist[a.2].4), at) AS found "
        "FROM (SELECT total, key, sum(size) AS n, arraySort(groupArray((bucket, size, low, high))) AS hist, "
        f"arrayCumSum(arrayMap(b -> b.2, hist)) AS ends FROM ({histogram}) GROUP BY total, key)"
    )
    counts: dict[tuple[int, str], int] = {}
    found: dict[tuple[int, str], dict[int, float]] = {}
    inside: list[tuple[int, str, int, int, int]] = []
    for record in source.rows(located):
        group = (int(record["total"]), record["key"])
        counts[group] = int(record["n"])
        found[group] = {}
        for rank, bucket, offset, size, low, high in record["found"]:
            if offset == 0 or low == high:
                found[group][int(rank)] = low
            elif offset == size - 1:
                found[group][int(rank)] = high
            else:
                inside.append((*group, int(bucket), int(rank), int(offset)))
    if inside:
        listed = ", ".join(
            f"({total}, {quote(key)}, {bucket}, {rank}, {offset})"
            for total, key, bucket, rank, offset in inside
        )
        wanted = f"values('total UInt8, key String, bucket UInt64, rank UInt64, offset UInt64', {listed})"
        in_buckets = f"{_bucket(column)} IN (SELECT bucket FROM {wanted})"
        values = (
            f"SELECT {_MODEL} AS model, {_bucket(column)} AS bucket, {column} AS value "
            f"FROM {_calls(source, filters, *selected, in_buckets)}"
        )
        buckets = (
            "SELECT g.1 AS total, g.2 AS key, bucket, arraySort(groupArray(value)) AS sorted "
            f"FROM ({values}) ARRAY JOIN {groups} AS g "
            f"WHERE (total, key, bucket) IN (SELECT total, key, bucket FROM {wanted}) "
            "GROUP BY total, key, bucket"
        )
        sql = (
            "SELECT w.total AS total, w.key AS key, w.rank AS rank, s.sorted[w.offset + 1] AS value "
            f"FROM ({buckets}) AS s INNER JOIN {wanted} AS w "
            "ON w.total = s.total AND w.key = s.key AND w.bucket = s.bucket"
        )
        for record in source.rows(sql):
            found[(int(record["total"]), record["key"])][int(record["rank"])] = record["value"]
    out = {group: tuple(interpolate(found[group], n, p) for p in PERCENTILES) for group, n in counts.items()}
    return {key: figures for (total, key), figures in out.items() if not total}, out.get((1, ""))


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
    latency, latency_total = _percentiles(source, filters, "duration_ms")
    ttft, ttft_total = _percentiles(source, filters, "ttft_ms")
    return by_model, errors, latency, latency_total, ttft, ttft_total
