"""`report ops`: calls, errors by type, retries and latency/TTFT percentiles, worked by hand on a small set
and the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import statistics
from typing import Any

import pytest

from compactobs import store
from compactobs.reports.ops import ops_report
from compactobs.reports.sources.sql_anomalies_ops import percentiles
from compactobs.reports.times import build_filters
from compactobs.store.models import calls
from tests.cli import one_line_error, run
from tests.reports.test_anomalies import call, failed_call, store_rows

SONNET = "claude-sonnet-4-5"
HAIKU = "claude-haiku-4-5"


def _rows() -> list[dict[str, Any]]:
    connection_error = failed_call("a7", 7, 429, request_model=SONNET, duration_ms=5000.0, attempts=3)
    connection_error.update(error_type="APIConnectionError", http_status=None)
    return [
        # sonnet: 5 successes (durations 100, 200, 300, 400, 1000 ms; 4 streamed), one retried once
        call("a1", 1, duration_ms=100.0, stream=True, ttft_ms=50.0),
        call("a2", 2, duration_ms=200.0, stream=True, ttft_ms=80.0, attempts=2),
        call("a3", 3, duration_ms=300.0, stream=True, ttft_ms=90.0),
        call("a4", 4, duration_ms=400.0, stream=True, ttft_ms=200.0),
        call("a5", 5, duration_ms=1000.0, stream=False),
        # ... and 2 failures after 3 attempts each: not in the latency percentiles
        failed_call("a6", 6, 429, request_model=SONNET, duration_ms=50.0, attempts=3),
        connection_error,
        # haiku: one success at 250 ms, one 529
        call("b1", 8, request_model=HAIKU, response_model=HAIKU, duration_ms=250.0),
        failed_call("b2", 9, 529, request_model=HAIKU, duration_ms=30.0),
    ]


def _report(url: str, **filters: Any) -> Any:
    engine = store.open_database(url)
    try:
        return ops_report(engine, build_filters(None, None, "UTC", **filters))
    finally:
        engine.dispose()


def test_ops_worked_by_hand(database_url: str) -> None:
    store_rows(database_url, _rows())
    report = _report(database_url)
    haiku, sonnet = report.rows
    # sonnet latency, n = 5: p50 at h = 2 -> 300; p95 at h = 3.8 -> 400 + 600 x 0.8 = 880;
    # p99 at h = 3.96 -> 400 + 600 x 0.96 = 976
    assert sonnet == {
        "model": SONNET,
        "calls": 7,
        "error_calls": 2,
        "error_rate": 2 / 7,
        "retried_calls": 3,
        "retries": 5,  # 1 + 2 + 2
        "latency_p50_ms": 300.0,
        "latency_p95_ms": 880.0,
        "latency_p99_ms": 976.0,
        # TTFT, n = 4 (50, 80, 90, 200): p50 at h = 1.5 -> 85; p95 at h = 2.85 -> 90 + 110 x 0.85 = 183.5;
        # p99 at h = 2.97 -> 90 + 110 x 0.97 = 196.7
        "ttft_p50_ms": 85.0,
        "ttft_p95_ms": 183.5,
        "ttft_p99_ms": 196.7,
    }
    assert haiku == {
        "model": HAIKU,
        "calls": 2,
        "error_calls": 1,
        "error_rate": 0.5,
        "retried_calls": 0,
        "retries": 0,
        "latency_p50_ms": 250.0,
        "latency_p95_ms": 250.0,
        "latency_p99_ms": 250.0,
        "ttft_p50_ms": None,
        "ttft_p95_ms": None,
        "ttft_p99_ms": None,
    }
    # every model, n = 6 (100, 200, 250, 300, 400, 1000): p50 at h = 2.5 -> 275; p95 at h = 4.75 -> 850;
    # p99 at h = 4.95 -> 970
    assert report.totals == {
        "calls": 9,
        "error_calls": 3,
        "error_rate": 3 / 9,
        "retried_calls": 3,
        "retries": 5,
        "latency_p50_ms": 275.0,
        "latency_p95_ms": 850.0,
        "latency_p99_ms": 970.0,
        "ttft_p50_ms": 85.0,
        "ttft_p95_ms": 183.5,
        "ttft_p99_ms": 196.7,
    }
    assert report.extra["errors"] == [
        {"error_type": "429", "calls": 1, "share_of_errors": 1 / 3, "share_of_calls": 1 / 9, "retries": 2},
        {"error_type": "529", "calls": 1, "share_of_errors": 1 / 3, "share_of_calls": 1 / 9, "retries": 0},
        {
            "error_type": "APIConnectionError",
            "calls": 1,
            "share_of_errors": 1 / 3,
            "share_of_calls": 1 / 9,
            "retries": 2,
        },
    ]


def test_ops_filters(database_url: str) -> None:
    store_rows(database_url, _rows())
    report = _report(database_url, models=("claude-haiku-*",))
    assert [r["model"] for r in report.rows] == [HAIKU]
    assert report.totals is not None and report.totals["calls"] == 2
    empty = _report(database_url, conversations=("nobody",))
    assert empty.rows == [] and empty.totals is None


def test_percentiles_are_the_same_on_sqlite_and_postgresql(sqlite_url: str, postgres_url: str) -> None:
    rng = random.Random(7)
    durations = [round(rng.lognormvariate(6, 1), 3) for _ in range(257)]
    rows = [
        call(f"c{i:03d}", i, duration_ms=d, request_model=SONNET if i % 3 else HAIKU)
        for i, d in enumerate(durations)
    ]
    results = []
    for url in (sqlite_url, postgres_url):
        store_rows(url, rows)
        engine = store.open_database(url)
        try:
            found = percentiles(
                engine, calls.c.duration_ms, calls.c.request_model, [], (0.5, 0.9, 0.95, 0.99)
            )
            everything = percentiles(engine, calls.c.duration_ms, None, [], (0.5, 0.9, 0.95, 0.99))
        finally:
            engine.dispose()
        results.append((found, everything))
    assert results[0] == results[1]  # bit for bit
    # and they are the textbook definition: statistics.quantiles' "inclusive" method (the same
    # interpolation, computed another way)
    found, everything = results[0]
    expected = statistics.quantiles(durations, n=100, method="inclusive")
    got = next(iter(everything.values()))
    assert got == pytest.approx((expected[49], expected[89], expected[94], expected[98]), rel=1e-12)
    sonnet = [d for i, d in enumerate(durations) if i % 3]
    expected = statistics.quantiles(sonnet, n=100, method="inclusive")
    assert found[SONNET] == pytest.approx((expected[49], expected[89], expected[94], expected[98]), rel=1e-12)


def test_cli_ops(database_url: str) -> None:
    store_rows(database_url, _rows())
    code, out, _ = run("--db", database_url, "report", "ops", "--format", "json", "--tz", "UTC")
    assert code == 0
    document = json.loads(out)
    assert document["report"] == "ops"
    assert [r["model"] for r in document["rows"]] == [HAIKU, SONNET]
    assert document["rows"][1]["latency_p95_ms"] == 880.0
    assert document["rows"][1]["error_rate"] == 0.285714  # 2 / 7, six places
    assert document["totals"]["latency_p50_ms"] == 275.0
    assert [e["error_type"] for e in document["errors"]] == ["429", "529", "APIConnectionError"]


def test_cli_ops_table_csv_md(sqlite_url: str) -> None:
    store_rows(sqlite_url, _rows())
    code, out, _ = run("--db", sqlite_url, "report", "ops", "--tz", "UTC")
    assert code == 0
    assert "percentile_cont" in out and "Errors by type" in out
    assert SONNET in out and "880.0" in out and "28.6%" in out
    code, out, _ = run("--db", sqlite_url, "report", "ops", "--format", "csv")
    assert out.splitlines()[0].startswith(
        "model,calls,error_calls,error_rate,retried_calls,retries,latency_p50_ms"
    )
    assert out.splitlines()[2].startswith(f"{SONNET},7,2,0.285714,3,5,300.0,880.0,976.0,85.0,183.5,196.7")
    code, out, _ = run("--db", sqlite_url, "report", "ops", "--format", "md")
    assert "### Errors by type" in out and "| 429 |" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--since", "nope"), "invalid date or time 'nope'"),
        (("--until", "2026-13-01"), "invalid date '2026-13-01': no such day"),
        (("--since", "2026-02-01", "--until", "2026-01-01"), "is not before --until"),
        (("--tz", "Nowhere/Land"), "unknown time zone"),
        (("--format", "yaml"), "'yaml' is not one of"),
        (("--model",), "requires an argument"),
        (("extra",), "Got unexpected extra argument (extra)"),
    ],
)
def test_cli_ops_bad_input(sqlite_url: str, args: tuple[str, ...], expected: str) -> None:
    store.upgrade_database(sqlite_url)
    code, _, err = run("--db", sqlite_url, "report", "ops", *args)
    assert expected in one_line_error(code, err)


def test_cli_ops_bad_database(tmp_path: Any) -> None:
    code, _, err = run("--db", "mysql://x@y/z", "report", "ops")
    assert "unsupported database" in one_line_error(code, err)


def test_percentiles_across_buckets(database_url: str) -> None:
    # Values on every side of the bucket edges (below 0, [0, 100), each decade, beyond 10^15) and ties:
    # the percentiles are exact, as the textbook's over the sorted values.
    durations = [-5.0, 0.25, 0.75, 99.9, 100.0, 100.0, 999.99, 1000.0, 1000.4, 1000.6, 12345.6, 1e16, 3e16]
    rows = [call(f"e{i:02d}", i, duration_ms=d) for i, d in enumerate(durations)]
    store_rows(database_url, rows)
    engine = store.open_database(database_url)
    try:
        found = percentiles(engine, calls.c.duration_ms, None, [], (0.0, 0.25, 0.5, 0.9, 1.0))
    finally:
        engine.dispose()
    # n = 13, h = 12 p: p0 -> x[0] = -5; p25 at h = 3 -> x[3] = 99.9; p50 at h = 6 -> x[6] = 999.99;
    # p90 at h = 10.8 -> x[10] + (x[11] - x[10]) x 0.8 = 12345.6 + (1e16 - 12345.6) x 0.8; p100 -> 3e16
    (got,) = found.values()
    assert got[:3] == (-5.0, 99.9, 999.99) and got[4] == 3e16
    assert got[3] == pytest.approx(12345.6 + (1e16 - 12345.6) * 0.8, rel=1e-12)
