"""`report ops` on ClickHouse: the counts by model and error type, and the ranked values the percentiles
are interpolated from (`sources.base.interpolate`: the same formula, in the same arithmetic),
found through a histogram so the engine never holds every value."""

from __future__ import annotations

from typing import Final

from compactobs.reports.model import Filters
from compactobs.reports.sources.base import PERCENTILES, OpsFigures, Percentiles, interpolate
from compactobs.reports.sources.clickhouse import spans
from compactobs.reports.sources.clickhouse.client import ClickHouseClient
from compactobs.reports.sources.clickhouse.cost import JOIN_SETTINGS
from compactobs.store.errors import StoreError

__all__ = ["ops_figures"]

_MODEL: Final = "coalesce(c.request_model, c.response_model, '(unknown)')"
_FAILED: Final = "(c.status = 'ERROR' OR c.error_type IS NOT NULL)"


def _calls(source: ClickHouseClient, filters: Filters, *extra: str) -> str:
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


def _percentiles(
    source: ClickHouseClient, filters: Filters, value: str
) -> tuple[Percentiles, tuple[float, ...] | None]:
    """({model: percentiles}, the percentiles over every model or None) of the non-NULL `value`s of the
    successful calls, exact, in engine memory bounded by the buckets read, not by the calls: a histogram of
    the values' buckets (count, lowest, highest) by model, and over every model from it, places each rank
    the percentiles need in its bucket; a rank at its bucket's edge, or in a bucket of one distinct value,
    is read off the histogram, any other from its bucket's values, sorted. One query, so the histogram and
    the values are one snapshot of the tables (ClickHouse's `enable_shared_storage_snapshot_in_query`): a
    span inserted meanwhile cannot move a rank (checked: the query is run again if a bucket's values are
    not the ones counted). A group is (0, model), or (1, '') for the total."""
    ps = ", ".join(repr(p) for p in PERCENTILES)
    column = f"c.{value}"
    calls = _calls(source, filters, f"{column} IS NOT NULL", f"NOT {_FAILED}")
    groups = "[(toUInt8(0), model), (toUInt8(1), '')]"
    by_model = (
        f"SELECT {_MODEL} AS model, {_bucket(column)} AS bucket, count() AS size, min({column}) AS low, "
        f"max({column}) AS high FROM {calls} GROUP BY model, bucket"
    )
    histogram = (
        "SELECT g.1 AS total, g.2 AS key, bucket, sum(size) AS size, min(low) AS low, max(high) AS high "
        f"FROM ({by_model}) ARRAY JOIN {groups} AS g GROUP BY total, key, bucket"
    )
    ranks = (
        f"arraySort(arrayDistinct(arrayFlatten(arrayMap(p -> [toUInt64(floor((n - 1) * p)), "
        f"toUInt64(ceil((n - 1) * p))], [{ps}]))))"
    )
    # A rank's bucket is the first whose running count passes it: (rank, bucket, offset in the bucket, the
    # bucket's count, lowest, highest), one row per rank.
    located = (
        "SELECT total, key, n, "
        f"arrayJoin(arrayMap(r -> (r, arrayFirstIndex(e -> e > r, ends)), {ranks})) AS a, "
        "a.1 AS rank, hist[a.2].1 AS bucket, a.1 - (ends[a.2] - hist[a.2].2) AS offset, hist[a.2].2 AS size, "
        "hist[a.2].3 AS low, hist[a.2].4 AS high, offset > 0 AND offset < size - 1 AND low != high AS inside "
        "FROM (SELECT total, key, sum(size) AS n, arraySort(groupArray((bucket, size, low, high))) AS hist, "
        f"arrayCumSum(arrayMap(b -> b.2, hist)) AS ends FROM ({histogram}) GROUP BY total, key)"
    )
    # A bucket's ranks are one row (its values sorted once, however many ranks fall in it); only the ranks
    # inside a bucket join its values (an edge's bucket may hold every value: the edges join none).
    placed = (
        "SELECT total, key, any(n) AS n, if(inside, bucket, NULL) AS joined, "
        "groupArray((rank, offset, size, low, high, inside)) AS here FROM "
        f"({located}) GROUP BY total, key, joined"
    )
    values = (
        f"SELECT g.1 AS total, g.2 AS key, bucket, value FROM (SELECT {_MODEL} AS model, "
        f"{_bucket(column)} AS bucket, {column} AS value FROM {calls}) ARRAY JOIN {groups} AS g"
    )
    sorted_values = (
        "SELECT r.total AS total, r.key AS key, any(r.n) AS n, any(r.here) AS here, "
        f"arraySort(groupArray(v.value)) AS sorted FROM ({values}) AS v RIGHT JOIN ({placed}) AS r "
        "ON v.total = r.total AND v.key = r.key AND v.bucket = r.joined GROUP BY r.total, r.key, r.joined"
    )
    # `whole`: the bucket holds the values the histogram counted (one snapshot: always, unless a server
    # turned off enable_shared_storage_snapshot_in_query and a span arrived between the two reads).
    sql = (
        "SELECT total, key, n, h.1 AS rank, "
        "if(h.6, sorted[h.2 + 1], if(h.2 = 0 OR h.4 = h.5, h.4, h.5)) AS value, "
        "NOT h.6 OR length(sorted) = h.3 AS whole "
        f"FROM ({sorted_values}) ARRAY JOIN here AS h"
    )
    for _ in range(3):
        records = source.rows(sql, JOIN_SETTINGS)
        if all(record["whole"] for record in records):
            break
    else:
        raise StoreError(f"ClickHouse data changed while its percentiles were read, three times ({value})")
    counts: dict[tuple[int, str], int] = {}
    found: dict[tuple[int, str], dict[int, float]] = {}
    for record in records:
        group = (int(record["total"]), record["key"])
        counts[group] = int(record["n"])
        found.setdefault(group, {})[int(record["rank"])] = record["value"]
    out = {group: tuple(interpolate(found[group], n, p) for p in PERCENTILES) for group, n in counts.items()}
    return {key: figures for (total, key), figures in out.items() if not total}, out.get((1, ""))


def ops_figures(source: ClickHouseClient, filters: Filters) -> OpsFigures:
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
