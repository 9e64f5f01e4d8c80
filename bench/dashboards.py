"""Every SQL panel of the PostgreSQL dashboard, timed on a 1M-call store (bench/reports.py's generator:
90 days, 10,000 conversations, ~3M iterations), for the last day, week and month of the data.

Each query is what Grafana sends: the dashboard's SQL with its macros expanded (tests/grafana_macros.py)
for the range, series panels bucketed by the `$__interval` Grafana picks for ~1,000 points (1 min, 10 min,
1 h). Per panel and range: the median of --repeat runs after one warm-up run, and the ratio to a baseline
measured in the same run: `SELECT count(*)` of the range's calls (the index range scan every panel makes).
Shared 2-core machine: figures move by tens of percent between runs; the ratios are steadier.

Run: `python bench/dashboards.py` (default 1,000,000 calls; `--calls 100000` for a quicker run).
PostgreSQL is COMPACTOBS_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test); the
generated store is kept in schema `bench_dashboards_<parameters>` and reused.

`--clickhouse`: the ClickHouse dashboard's panels instead, on chdb over `otel_traces` as bench/clickhouse.py
generates it (3 spans a call, 90 days; kept under --data-dir and reused), macros expanded by
`expand_clickhouse`; the baseline is `SELECT count()` of the range's call spans (the sort key's range scan).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import reports as bench_reports  # noqa: E402  (bench/reports.py: its generator, not another)
from sqlalchemy import create_engine, text  # noqa: E402

from compactobs.reports.dashboard import sql_queries  # noqa: E402
from tests.grafana_macros import expand, expand_clickhouse  # noqa: E402

RANGES = (
    ("1 day", timedelta(days=1), "1m"),
    ("7 days", timedelta(days=7), "10m"),
    ("30 days", timedelta(days=30), "1h"),
)


def store(params: bench_reports.Params, base: str) -> tuple[str, bench_reports.Meta]:
    """The generated store's URL and what it holds: reused when its parameters and schema revision match."""
    schema = f"bench_dashboards_{params.key}"
    meta = bench_reports.postgres_meta(base, schema)
    if meta is None or meta.key != params.key or meta.head != bench_reports.head_revision():
        print(f"generating {params.calls:,} calls into PostgreSQL ...", file=sys.stderr)
        meta = bench_reports.generate(params, [bench_reports.PostgresSink(base, schema)])
    return bench_reports.schema_url(base, schema), meta


def timed(connection: object, sql: str, repeat: int) -> tuple[float, int]:
    """Median seconds of `repeat` runs after a warm-up, and the rows returned."""
    rows = len(connection.execute(text(sql)).all())  # type: ignore[attr-defined]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        connection.execute(text(sql)).all()  # type: ignore[attr-defined]
        times.append(time.perf_counter() - started)
    return statistics.median(times), rows


def timed_chdb(session: object, sql: str, repeat: int) -> tuple[float, int]:
    """As `timed`, on a chdb session."""

    def rows() -> int:
        return len(session.query(sql, "CSV").data().splitlines())  # type: ignore[attr-defined]

    count = rows()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        rows()
        times.append(time.perf_counter() - started)
    return statistics.median(times), count


def clickhouse(calls: int, repeat: int, data_dir: Path) -> None:
    """The ClickHouse dashboard's panels on chdb, against a count() of the range's call spans."""
    import clickhouse as bench_clickhouse  # bench/clickhouse.py: its generator, not another
    from chdb import session as chdb_session

    from compactobs import semconv as t
    from compactobs.reports.dashboard import GRAFANA_CLICKHOUSE

    directory, _, spans = bench_clickhouse.prepare(calls, data_dir)
    end = datetime.fromtimestamp(bench_clickhouse.T0_NS / 1e9 + bench_clickhouse.DAYS * 86400, timezone.utc)
    print(f"chdb, {calls:,} calls, {spans:,} spans in otel_traces, data up to {end:%Y-%m-%d}")
    print(bench_reports.platform_line())
    variables: dict[str, str] = {}  # the selection variables at their defaults (All)
    count = (
        "SELECT count() FROM otel_traces WHERE Timestamp >= $__fromTime_ms AND Timestamp < $__toTime_ms "
        f"AND SpanAttributes['{t.SPAN_KIND}'] = '{t.SPAN_KIND_CALL}'"
    )
    header = f"{'panel':<22}" + "".join(f"{name:>24}" for name, _, _ in RANGES)
    with chdb_session.Session(str(directory)) as session:
        baselines, calls_in = [], []
        for _, span, interval in RANGES:
            sql = expand_clickhouse(count, end - span, end, interval, variables)
            seconds, _ = timed_chdb(session, sql, repeat)
            baselines.append(seconds)
            calls_in.append(int(session.query(sql, "CSV").data().strip()))
        print(header)
        print(
            f"{'baseline count()':<22}"
            + "".join(f"{s * 1000:>9.1f} ms {n:>9,} calls" for s, n in zip(baselines, calls_in, strict=True))
        )
        for query in sql_queries(GRAFANA_CLICKHOUSE):
            cells = []
            for (_, span, interval), baseline in zip(RANGES, baselines, strict=True):
                sql = expand_clickhouse(query.sql, end - span, end, interval, variables)
                seconds, rows = timed_chdb(session, sql, repeat)
                cells.append(f"{seconds * 1000:>9.1f} ms {seconds / baseline:>6.1f}x {rows:>4}r")
            print(f"{query.key:<22}" + "".join(f"{c:>24}" for c in cells))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after the warm-up (median)")
    parser.add_argument("--clickhouse", action="store_true", help="the ClickHouse dashboard, on chdb")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path.home() / ".cache" / "compactobs-bench",
        help="where bench/clickhouse.py's generated chdb directory is kept (--clickhouse)",
    )
    args = parser.parse_args(argv)
    if args.calls < 1000 or args.repeat < 1:
        parser.error("--calls must be at least 1000 and --repeat at least 1")
    if args.clickhouse:
        clickhouse(args.calls, args.repeat, args.data_dir)
        return
    base = os.environ.get("COMPACTOBS_TEST_POSTGRES_URL", bench_reports.DEFAULT_POSTGRES)
    url, meta = store(bench_reports.Params(args.calls, 90, 10_000, 42), base)
    end = datetime.fromisoformat(meta.end)
    print(f"PostgreSQL, {meta.calls:,} calls, {meta.iterations:,} iterations, data up to {end:%Y-%m-%d}")
    print(bench_reports.platform_line())
    engine = create_engine(url)
    queries = sql_queries()
    header = f"{'panel':<22}" + "".join(f"{name:>24}" for name, _, _ in RANGES)
    with engine.connect() as connection:
        # As the reports run (compactobs.reports.sources.sql_reading.reading).
        connection.exec_driver_sql("SET jit = off")
        baselines = []
        calls_in = []
        for _, span, interval in RANGES:
            sql = expand(
                "SELECT count(*) FROM calls WHERE start_ms >= $__unixEpochFrom()::bigint * 1000 "
                "AND start_ms < $__unixEpochTo()::bigint * 1000",
                end - span,
                end,
                interval,
            )
            seconds, _ = timed(connection, sql, args.repeat)
            baselines.append(seconds)
            calls_in.append(connection.execute(text(sql)).scalar_one())
        print(header)
        print(
            f"{'baseline count(*)':<22}"
            + "".join(f"{s * 1000:>9.1f} ms {n:>9,} calls" for s, n in zip(baselines, calls_in, strict=True))
        )
        for query in queries:
            cells = []
            for (_, span, interval), baseline in zip(RANGES, baselines, strict=True):
                seconds, rows = timed(connection, expand(query.sql, end - span, end, interval), args.repeat)
                cells.append(f"{seconds * 1000:>9.1f} ms {seconds / baseline:>6.1f}x {rows:>4}r")
            print(f"{query.key:<22}" + "".join(f"{c:>24}" for c in cells))
    engine.dispose()


if __name__ == "__main__":
    import _harness

    _harness.run(main)
