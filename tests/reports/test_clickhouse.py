"""The ClickHouse source: the same traffic, recorded through the SQL store (PostgreSQL) and written into the
Collector's `otel_traces` table in chdb, gives identical report JSON, report by report.

The traffic is the demo's workload (`compactobs.demo`: caching, a compaction loop over a budget, a paused
and an on-demand compaction, a failed one, 429/529 errors, an unpriced model) through the real SDK against
the loopback simulator. Its finished spans are kept by an InMemorySpanExporter on the same TracerProvider as
the store's exporter, and `tests/otel_traces.py` writes them as the exporter's documented mapping does
(opentelemetry-collector-contrib, exporter/clickhouseexporter: `exporter_traces.go` `pushTraceData`,
`internal/sql_templates/traces_table.sql`, and pdata's `Value.AsString` for attribute values; see that
module's docstring).
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from compactobs import semconv as telemetry
from compactobs import store
from compactobs.reports.anomalies import Thresholds, anomalies_report, load_budgets
from compactobs.reports.cache import cache_report
from compactobs.reports.conversation import conversation_report
from compactobs.reports.cost import BY_CHOICES, CALLS_ONLY, cost_report
from compactobs.reports.model import ReportInputError
from compactobs.reports.ops import ops_report
from compactobs.reports.render import render
from compactobs.reports.sources.clickhouse import slots, spans
from compactobs.reports.sources.clickhouse.client import records
from compactobs.reports.sources.clickhouse.source import ClickHouseSource
from compactobs.reports.times import build_filters
from compactobs.testing import Simulator
from tests.cli import one_line_error, run
from tests.clickhouse_http import http_front
from tests.guard.test_guard import record_capped_conversation
from tests.otel_traces import double_text, write_spans
from tests.recording import DemoRecording


@pytest.fixture(scope="module")
def recorded(
    demo_recording: DemoRecording, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The demo recorded into PostgreSQL (once a session: tests/conftest.py), and its spans written into
    otel_traces in a chdb directory of this module's own (its tests set it up and add tables)."""
    directory: Path = tmp_path_factory.mktemp("chdb")
    source = ClickHouseSource(f"chdb://{directory}")
    written = write_spans(source, demo_recording.spans)
    engine = store.open_database(demo_recording.url)
    try:
        yield {
            "engine": engine,
            "source": source,
            "summary": demo_recording.summary,
            "spans": written,
            "dir": directory,
            "finished": demo_recording.spans,
        }
    finally:
        engine.dispose()
        source.close()


def _json(report: Any) -> dict[str, Any]:
    return json.loads(render(report, "json"))


def test_result_values_take_their_column_types_quoted_or_not() -> None:
    """Integers come as JSON numbers under the source's quoting setting, and as strings from a server that
    did not apply it: both give ints; decimals (always quoted) give exact Decimals; NULLs stay None."""
    text = "\n".join(
        [
            '["n", "big", "usd", "name"]',
            '["UInt64", "Nullable(Int64)", "Nullable(Decimal(38, 10))", "String"]',
            '[18446744073709551615, null, "0.1000000001", "a"]',
            '[2, -9223372036854775808, null, "b"]',
        ]
    )
    quoted = (
        text.replace("18446744073709551615", '"18446744073709551615"')
        .replace("-9223372036854775808", '"-9223372036854775808"')
        .replace("[2,", '["2",')
    )
    for result in (text, quoted):
        assert records(result) == [
            {"n": 18446744073709551615, "big": None, "usd": Decimal("0.1000000001"), "name": "a"},
            {"n": 2, "big": -9223372036854775808, "usd": None, "name": "b"},
        ]
        assert all(type(row["n"]) is int for row in records(result))


def test_infinite_and_nan_floats_come_back_as_floats(recorded: dict[str, Any]) -> None:
    """A float column's inf and nan (a foreign span's attribute, say) are floats, not None: `report ops`
    interpolates with them as the SQL store's Python arithmetic does instead of failing on None."""
    row = recorded["source"].rows(
        "SELECT toFloat64('inf') AS up, -toFloat64('inf') AS down, toFloat64('nan') AS neither, "
        "[toFloat64('inf'), 1.5] AS listed"
    )[0]
    assert (row["up"], row["down"], row["listed"]) == (math.inf, -math.inf, [math.inf, 1.5])
    assert math.isnan(row["neither"])


def test_double_text_follows_es6_number_printing() -> None:
    """The exporter's float text (pdata AsString), worked by hand: fixed from 1e-6, else e-notation."""
    assert double_text(0.14) == "0.14"
    assert double_text(3.0) == "3"
    assert double_text(1.1275) == "1.1275"
    assert double_text(0.000003) == "0.000003"
    assert double_text(3e-7) == "3e-7"
    assert double_text(1.5e21) == "1.5e+21"
    assert double_text(-2.5e-8) == "-2.5e-8"


@pytest.mark.parametrize("by", BY_CHOICES)
def test_cost_by_every_grouping_is_the_same_json(recorded: dict[str, Any], by: str) -> None:
    filters = build_filters(None, None, "Europe/Paris")
    expected = _json(cost_report(recorded["engine"], filters, (by,)))
    got = _json(cost_report(recorded["source"], filters, (by,)))
    assert expected["rows"], "the demo recorded calls"
    assert got == expected


def test_ops_is_the_same_json(recorded: dict[str, Any]) -> None:
    filters = build_filters(None, None, "UTC")
    expected = _json(ops_report(recorded["engine"], filters))
    got = _json(ops_report(recorded["source"], filters))
    assert expected["errors"], "the demo has errors"
    assert expected["totals"]["latency_p95_ms"] is not None
    assert got == expected


def _call_spans(durations_ns: dict[str, list[int]], ttft_s: dict[str, list[float]]) -> list[Any]:
    """compactobs call spans of the given models and durations (a model's first calls streamed, with its
    `ttft_s`), and one failed call per model, whose duration no percentile may count."""
    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer(telemetry.INSTRUMENTATION_SCOPE)
    start = 1_767_225_600 * 10**9
    for model, durations in durations_ns.items():
        ttfts = iter(ttft_s.get(model, ()))
        for n, duration in enumerate([*durations, 10**12]):
            attributes: dict[str, Any] = {
                telemetry.SPAN_KIND: telemetry.SPAN_KIND_CALL,
                telemetry.REQUEST_MODEL: model,
            }
            ttft = next(ttfts, None) if n < len(durations) else None
            if ttft is not None:
                attributes[telemetry.RESPONSE_TIME_TO_FIRST_CHUNK] = ttft
            span = tracer.start_span(f"chat {model}", start_time=start + n * 10**9, attributes=attributes)
            if n == len(durations):
                span.set_attribute(telemetry.ERROR_TYPE, "overloaded_error")
            span.end(end_time=start + n * 10**9 + duration)
    provider.shutdown()
    return list(kept.get_finished_spans())


def _percentile_cont(values: list[float], p: float) -> float:
    """PostgreSQL's percentile_cont, by its definition: linear between the closest ranks of the sorted
    values, h = (n - 1) p."""
    ordered = sorted(values)
    h = (len(ordered) - 1) * p
    low, high = ordered[math.floor(h)], ordered[math.ceil(h)]
    return low + (high - low) * (h - math.floor(h))


def _large_pair(rng: Any) -> list[float]:
    """Two times to first chunk (seconds) whose milliseconds are whole floats above 2**53 (the lowest and
    highest of their buckets, read off the histogram), chosen so that interpolating between the integers
    ClickHouse prints for them (their shortest digits, then zeros) differs from interpolating between the
    floats."""
    from compactobs.reports.ops import PERCENTILES

    def printed(value: float) -> int:
        return int(Decimal(repr(value)))

    while True:
        low = float(rng.randrange(10**17, 10**18))
        pair = [low, low * (1 + rng.randrange(1, 1000) / 10**6)]
        a, b = (v * 1000.0 for v in pair)
        if any(a + (b - a) * p != printed(a) + (printed(b) - printed(a)) * p for p in PERCENTILES):
            return pair


def test_ops_percentiles_are_exact_inside_a_histogram_bucket(recorded: dict[str, Any]) -> None:
    """The percentiles come from a histogram of value buckets, then only the needed buckets' values: a rank
    inside a crowded bucket, in a bucket of one repeated value and at a bucket's edge (whole-valued floats
    too large for their decimal text to be exact among them) all give exactly the sorted values' linear
    interpolation, and a failed call's duration counts in none."""
    import random

    from compactobs.reports.ops import PERCENTILES
    from compactobs.reports.sources.clickhouse.ops import _bucket, ops_figures

    rng = random.Random(7)
    # 1000 ms + up to 50 µs: one bucket (a bucket spans 1/4096 of [512, 1024) ms, 125 µs).
    crowded = [10**9 + rng.randrange(50_000) for _ in range(501)]
    spread = [rng.randrange(1, 10**11) for _ in range(203)]
    durations = {"model-crowded": crowded, "model-repeated": [250 * 10**6] * 97, "model-spread": spread}
    ttft = {
        "model-crowded": [0.5 + rng.randrange(1000) / 10**7 for _ in range(301)],
        "model-spread": _large_pair(rng),
    }
    source = _late_copy(recorded["source"], "ops_buckets")
    try:
        write_spans(source, _call_spans(durations, ttft), source.table)
        filters = build_filters(None, None, "UTC")
        by_model, _, latency, latency_total, ttft_by_model, ttft_total = ops_figures(source, filters)

        def expected(values_ms: list[float]) -> tuple[float, ...]:
            return tuple(_percentile_cont(values_ms, p) for p in PERCENTILES)

        def ms(values_ns: list[int]) -> list[float]:
            return [value / 1e6 for value in values_ns]

        assert {row[0]: row[1] for row in by_model} == {
            "model-crowded": 502,
            "model-repeated": 98,
            "model-spread": 204,
        }
        for model, values in durations.items():
            assert latency[model] == expected(ms(values)), model
        everything = [value for values in durations.values() for value in values]
        assert latency_total == expected(ms(everything))
        assert latency["model-repeated"] == (250.0, 250.0, 250.0)
        ttft_ms = {model: [v * 1000.0 for v in values] for model, values in ttft.items()}
        assert ttft_by_model == {model: expected(values) for model, values in ttft_ms.items()}
        assert ttft_total == expected([v for values in ttft_ms.values() for v in values])
        # Floats, not the integers ClickHouse's text of a large whole float parses to.
        every = [*latency.values(), latency_total, *ttft_by_model.values(), ttft_total]
        assert all(type(figure) is float for figures in every for figure in figures)
        # The crowded model's values are one bucket, so its ranks were read from inside it.
        buckets = source.rows(
            f"SELECT uniqExact({_bucket('duration_ms')}) AS n FROM ({spans.calls_select(source.table)}) "
            "WHERE request_model = 'model-crowded' AND error_type IS NULL"
        )
        assert buckets[0]["n"] == 1
    finally:
        source.execute("DROP DATABASE IF EXISTS ops_buckets")


def test_ops_percentiles_are_read_again_when_a_bucket_changed_under_them(
    recorded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a server read the histogram and the bucket values at two instants (its shared snapshot turned
    off) and a span land between them, a bucket holds other values than it counted: the query runs again,
    and after three such reads the report fails in one line rather than print a wrong percentile."""
    from compactobs.reports.sources.clickhouse.ops import ops_figures
    from compactobs.store import StoreError

    source = copy.copy(recorded["source"])
    filters = build_filters(None, None, "UTC")
    expected = ops_figures(source, filters)
    real = ClickHouseSource.rows
    changed = {"reads": 0, "left": 1}

    def rows(self: Any, sql: str, settings: Any = None) -> list[dict[str, Any]]:
        records = real(self, sql, settings)
        if records and "whole" in records[0]:
            changed["reads"] += 1
            if changed["left"] > 0:
                changed["left"] -= 1
                records[0]["whole"] = False
        return records

    monkeypatch.setattr(ClickHouseSource, "rows", rows)
    assert ops_figures(source, filters) == expected
    assert changed["reads"] == 3  # duration read twice, then the time to first chunk once
    changed.update(reads=0, left=10)
    with pytest.raises(StoreError, match="changed while its percentiles were read"):
        ops_figures(source, filters)


def test_every_conversation_is_the_same_json(recorded: dict[str, Any]) -> None:
    filters = build_filters(None, None, "Asia/Kolkata")
    ids = [c.id for c in recorded["summary"].conversations]
    assert len(ids) >= 8
    for conversation_id in ids:
        expected = _json(conversation_report(recorded["engine"], filters, conversation_id))
        got = _json(conversation_report(recorded["source"], filters, conversation_id))
        assert expected["rows"]
        assert got == expected, conversation_id


def test_an_unknown_conversation_is_the_same_error(recorded: dict[str, Any]) -> None:
    filters = build_filters(None, None, "UTC")
    with pytest.raises(ReportInputError) as on_store:
        conversation_report(recorded["engine"], filters, "no-such-conversation")
    with pytest.raises(ReportInputError) as on_clickhouse:
        conversation_report(recorded["source"], filters, "no-such-conversation")
    assert str(on_clickhouse.value) == str(on_store.value)


@pytest.mark.parametrize(
    "by", [("model",), ("day",), ("conversation",), ("service", "iteration-type"), ("provider",)]
)
def test_cache_is_the_same_json(recorded: dict[str, Any], by: tuple[str, ...]) -> None:
    """At the demo's end and an hour later: the writes still within their TTL are judged by the clock."""
    filters = build_filters(None, None, "America/New_York")
    for now in (datetime.now(timezone.utc), datetime.now(timezone.utc) + timedelta(hours=2)):
        expected = _json(cache_report(recorded["engine"], filters, by, now=now))
        got = _json(cache_report(recorded["source"], filters, by, now=now))
        assert expected["totals"]["saved_usd"], "the demo reads the cache"
        # Every call counts, the error call without usage too (the store's rollups once left it out).
        assert expected["totals"]["calls"] == recorded["summary"].calls
        assert got == expected


def test_anomalies_are_the_same_json(recorded: dict[str, Any], tmp_path: Path) -> None:
    """With the budgets stored with the calls, and with a budgets file; with the default thresholds and
    with thresholds that make every rule fire on the demo (an error burst among them)."""
    filters = build_filters(None, None, "UTC")
    budgets_file = tmp_path / "budgets.toml"
    budgets_file.write_text('[budgets."demo-*"]\nusd = 0.05\ntokens = 20000\n', encoding="utf-8")
    eager = Thresholds(error_min_calls=2, error_share=0.01, cost_share=0.1, loop_min=2, loop_window=10)
    seen: set[str] = set()
    for thresholds, budgets in ((None, None), (eager, load_budgets(budgets_file))):
        expected = _json(anomalies_report(recorded["engine"], filters, thresholds, budgets))
        got = _json(anomalies_report(recorded["source"], filters, thresholds, budgets))
        seen.update(finding["kind"] for finding in expected["findings"])
        assert got == expected
    assert seen >= {
        "compaction_loop",
        "budget_exceeded",
        "failed_compaction",
        "compaction_cost_share",
        "cache_miss_after_compaction",
        "unpriced_model",
        "error_burst",
    }, seen


def test_the_cost_share_prefilter_sends_more_rows_and_the_same_findings(recorded: dict[str, Any]) -> None:
    """ClickHouse picks the conversations the share rule may flag by their compacting calls' cost, an upper
    bound of their compaction cost, before joining the compaction costs; the store by the exact share. Over
    a sweep of --cost-share, the JSON is the same, and at some threshold ClickHouse sends strictly more rows
    (a conversation over the bound and not over the share), so the bound's side is exercised."""
    from compactobs.reports.sources.clickhouse.anomalies import ClickHouseAnomalyData
    from compactobs.reports.sources.sql_anomalies_ops import SqlAnomalyData as _StoreData

    filters = build_filters(None, None, "UTC")
    wider = []
    for share in (0.1, 0.15, 0.3, 0.6):
        thresholds = Thresholds(cost_share=share)
        expected = _json(anomalies_report(recorded["engine"], filters, thresholds))
        assert _json(anomalies_report(recorded["source"], filters, thresholds)) == expected
        on_store = list(_StoreData(recorded["engine"], filters.call_conditions()).compaction_rows(thresholds))
        on_clickhouse = list(ClickHouseAnomalyData(recorded["source"], filters).compaction_rows(thresholds))
        assert {tuple(row) for row in on_store} <= {tuple(row) for row in on_clickhouse}
        if len(on_clickhouse) > len(on_store):
            wider.append(share)
    assert wider, "no threshold between a conversation's compaction share and its compacting calls' share"


def test_anomalies_grouped_queries_run_beside_the_compaction_rows_and_their_errors_reach_the_caller(
    recorded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ClickHouse's budget, unpriced and error queries run on one other thread while the compaction rows
    are read and judged (the parity test above checks what they give); a query that fails there fails the
    report with its own error, and no thread is left behind."""
    from compactobs.reports.sources.clickhouse.anomalies import ClickHouseAnomalyData
    from compactobs.store import StoreError

    threads: dict[str, str] = {}
    for name in ("compaction_rows", "budget_totals", "unpriced_groups", "error_hours"):
        original = getattr(ClickHouseAnomalyData, name)

        def noted(self: Any, *args: Any, _name: str = name, _original: Any = original) -> Any:
            threads[_name] = threading.current_thread().name
            return _original(self, *args)

        monkeypatch.setattr(ClickHouseAnomalyData, name, noted)
    filters = build_filters(None, None, "UTC")
    assert _json(anomalies_report(recorded["source"], filters))["findings"]
    assert threads["compaction_rows"] == threading.current_thread().name
    for name in ("budget_totals", "unpriced_groups", "error_hours"):
        assert threads[name].startswith("compactobs-anomalies"), (name, threads[name])

    def failing(self: Any) -> Any:
        raise StoreError("ClickHouse query failed on chdb://x: the unpriced query, on purpose")

    monkeypatch.setattr(ClickHouseAnomalyData, "unpriced_groups", failing)
    with pytest.raises(StoreError, match="the unpriced query, on purpose"):
        anomalies_report(recorded["source"], filters)
    left = [t.name for t in threading.enumerate() if t.name.startswith("compactobs-anomalies")]
    assert left == []


def test_filters_select_the_same_calls(recorded: dict[str, Any]) -> None:
    """--model globs, --service, --conversation globs and a window, on every report."""
    first = recorded["summary"].started_at
    filters = build_filters(
        (first - timedelta(minutes=1)).isoformat(),
        (first + timedelta(days=1)).date().isoformat(),
        "Europe/Paris",
        models=("claude-opus-*", "claude-haiku-4-5"),
        services=("compactobs-*",),
    )
    conversation = build_filters(None, None, "UTC", conversations=("demo-*-research-*", "demo-*-triage-?"))
    now = datetime.now(timezone.utc)
    for source_filters in (filters, conversation):
        reports = [
            lambda engine, f=source_filters: cost_report(engine, f, ("model", "day")),
            lambda engine, f=source_filters: cost_report(engine, f, ("conversation",)),
            lambda engine, f=source_filters: cache_report(engine, f, ("model",), now=now),
            lambda engine, f=source_filters: ops_report(engine, f),
            lambda engine, f=source_filters: anomalies_report(engine, f),
        ]
        for make in reports:
            expected = _json(make(recorded["engine"]))
            assert _json(make(recorded["source"])) == expected
    assert _json(cost_report(recorded["engine"], filters, ("model",)))["totals"]["calls"] > 0
    assert _json(cost_report(recorded["engine"], conversation, ("model",)))["totals"]["calls"] > 0


def test_after_setup_the_typed_tables_give_the_same_json(recorded: dict[str, Any]) -> None:
    """`compactobs clickhouse setup`: the typed tables (filled from the spans already there, then by the
    materialised views as spans arrive, duplicates merged away) serve every report, identically."""
    source: ClickHouseSource = recorded["source"]
    try:
        source.setup()
        source.setup()  # idempotent: the spans are not counted twice
        assert source.detect_typed()
        now = datetime.now(timezone.utc)
        filters = build_filters(None, None, "Europe/Paris")
        conversation = recorded["summary"].conversations[1].id
        for make in (
            lambda engine: cost_report(engine, filters, ("day",)),
            lambda engine: cost_report(engine, filters, ("model", "iteration-type")),
            lambda engine: cache_report(engine, filters, ("model",), now=now),
            lambda engine: ops_report(engine, filters),
            lambda engine: anomalies_report(engine, filters),
            lambda engine: conversation_report(engine, filters, conversation),
        ):
            assert _json(make(source)) == _json(make(recorded["engine"]))
        rows = source.rows("SELECT count() AS n FROM compactobs_calls FINAL")
        assert rows[0]["n"] == recorded["summary"].calls
    finally:
        source.typed = False


def _slot_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The levels `report cost` and `report cache` read from setup's slot sums, as they are read."""
    seen: list[str] = []
    original = slots.latest

    def latest(source: Any, level: str, filters: Any) -> str:
        seen.append(level)
        return original(source, level, filters)

    monkeypatch.setattr(slots, "latest", latest)
    return seen


_SLOT_GROUPINGS: Final = [*((by,) for by in BY_CHOICES if by not in CALLS_ONLY), ("model", "day")]
_CACHE_SLOT_GROUPINGS: Final = [("model",), ("day",), ("service", "iteration-type")]


def _late_copy(source: ClickHouseSource, database: str) -> ClickHouseSource:
    """The fixture's chdb session on a table of another database, not set up yet."""
    copied = copy.copy(source)
    copied.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    copied.table, copied.typed, copied.turns, copied._slots = f"{database}.otel_traces", False, False, None
    return copied


def _fresh(source: ClickHouseSource, slotted: bool = True) -> ClickHouseSource:
    """A report's own source: it refreshes the slots marked since the last refresh (`slotted` False: it
    reads the calls)."""
    fresh = copy.copy(source)
    fresh._slots = None if slotted else False
    return fresh


def _is_call(span: Any) -> bool:
    return span.attributes.get(telemetry.SPAN_KIND) == telemetry.SPAN_KIND_CALL


def _call_of(span: Any) -> int:
    return span.context.span_id if _is_call(span) else span.parent.span_id


def test_slots_arrive_late_and_twice_and_still_give_the_same_json(
    recorded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setup's per-slot sums, with spans as a Collector delivers them: half the calls before setup (some
    without their iteration spans); then, each insert followed by a report, the held-back iteration spans
    alone (their calls' slots are marked by nothing else), the other calls' iteration spans before their
    calls, the calls, and that batch once more (a retry). After each, every `report cost` grouping on whole
    slots, and `report cache` by model, day, service and iteration type at two clocks, read the slots and
    equal the same report read from the calls; at the end both equal the SQL store's JSON. An unaligned
    window reads the calls.

    After each insert the reports run on a rotation of the windows rather than on all of them: every
    grouping (and clock) is read after every insert, each in a window that shifts by one from one insert
    to the next, so over the four inserts every (window, grouping) pair is read at least once, and every
    window after every insert. At the end, every pair is read again and compared with the SQL store."""
    source = _late_copy(recorded["source"], "late")
    finished = list(recorded["finished"])
    is_call, call_of = _is_call, _call_of
    call_ids = sorted({s.context.span_id for s in finished if is_call(s)})
    early = set(call_ids[::2])
    held_back = set(sorted(early)[::4])
    first = recorded["summary"].started_at
    day = first.replace(hour=0, minute=0, second=0, microsecond=0)
    windows = [
        build_filters(None, None, "Europe/Paris"),
        build_filters(None, None, "UTC", models=("claude-opus-*",), services=("compactobs-*",)),
        build_filters(day.isoformat(), (day + timedelta(days=2)).isoformat(), "Asia/Kolkata"),
    ]
    # Now, and later: the open writes (no next call yet) are judged by the report's clock.
    nows = [datetime.now(timezone.utc), datetime.now(timezone.utc) + timedelta(hours=2)]
    reads = _slot_reads(monkeypatch)

    cases = [
        *((grouping, None) for grouping in _SLOT_GROUPINGS),
        *((grouping, now) for grouping in _CACHE_SLOT_GROUPINGS for now in nows),
    ]  # (a `report cost` grouping, None) or (a `report cache` grouping, its clock)

    def chosen(rotation: int | None) -> list[bool]:
        """Which (window, case) pairs run, window by window: all, or case k in window (k + rotation) mod 3."""
        return [
            rotation is None or (k + rotation) % len(windows) == w
            for w in range(len(windows))
            for k in range(len(cases))
        ]

    def reports(make_source: Any, slotted: bool = False, rotation: int | None = None) -> list[dict[str, Any]]:
        out = []
        runs = iter(chosen(rotation))
        for filters in windows:
            report_source = make_source()
            for grouping, now in cases:
                if not next(runs):
                    continue
                reads.clear()
                if now is None:
                    out.append(_json(cost_report(report_source, filters, grouping)))
                    assert bool(reads) == slotted, (grouping, filters)  # the slots answered, or did not
                else:
                    out.append(_json(cache_report(report_source, filters, grouping, now=now)))
                    assert sorted(reads) == (["cache", "open"] if slotted else []), (grouping, filters)
        return out

    def from_slots() -> ClickHouseSource:
        return _fresh(source)

    def from_calls() -> ClickHouseSource:
        return _fresh(source, slotted=False)

    def insert(spans: list[Any]) -> None:
        write_spans(source, spans, table="late.otel_traces")

    insert([s for s in finished if call_of(s) in early and (is_call(s) or call_of(s) not in held_back)])
    source.setup()
    late = [s for s in finished if call_of(s) not in early]
    batches = (
        [s for s in finished if call_of(s) in held_back and not is_call(s)],
        [s for s in late if not is_call(s)],
        [s for s in late if is_call(s)],
        [s for s in late if is_call(s)],
    )
    # Over the inserts the rotation reads every pair; after each insert, every case once.
    assert all(any(pairs) for pairs in zip(*(chosen(b) for b in range(len(batches))), strict=True))
    assert all(sum(chosen(b)) == len(cases) for b in range(len(batches)))
    for rotation, batch in enumerate(batches):
        insert(batch)
        assert reports(from_slots, slotted=True, rotation=rotation) == reports(from_calls, rotation=rotation)
    got = reports(from_slots, slotted=True)
    assert len(got) == len(windows) * len(cases)
    assert got == reports(lambda: recorded["engine"])
    assert _json(cost_report(recorded["engine"], windows[0], ("model",)))["totals"]["calls"] == len(call_ids)
    unaligned = build_filters((first - timedelta(minutes=1)).isoformat(), None, "UTC")
    reads.clear()
    expected = _json(cost_report(recorded["engine"], unaligned, ("day",)))
    assert _json(cost_report(from_slots(), unaligned, ("day",))) == expected
    expected = _json(cache_report(recorded["engine"], unaligned, ("model",), now=nows[1]))
    assert _json(cache_report(from_slots(), unaligned, ("model",), now=nows[1])) == expected
    assert reads == []
    source.setup()  # twice: nothing counted twice
    again = reports(from_slots, slotted=True, rotation=0)
    assert again == [r for r, run in zip(got, chosen(0), strict=True) if run]


def test_the_turns_table_under_late_and_repeated_inserts_gives_the_same_anomalies(
    recorded: dict[str, Any],
) -> None:
    """Setup's turns table (the calls in conversation order, filled through the typed calls' view) with
    half the calls before setup, the rest after (iterations before their calls), then that batch again: after
    each insert `report anomalies` read from the turns equals the same report read without them; at the end
    both equal the SQL store's JSON, over a window with filters too. Without the table (an older setup), the
    calls are read."""
    source = _late_copy(recorded["source"], "turns")
    finished = list(recorded["finished"])
    call_ids = sorted({s.context.span_id for s in finished if _is_call(s)})
    early = set(call_ids[::2])
    windows = [
        build_filters(None, None, "UTC"),
        build_filters(None, None, "UTC", models=("claude-opus-*",), services=("compactobs-*",)),
    ]

    def anomalies(turns: bool) -> list[dict[str, Any]]:
        reader = copy.copy(source)
        reader.turns = turns
        return [_json(anomalies_report(reader, filters)) for filters in windows]

    write_spans(source, [s for s in finished if _call_of(s) in early], table="turns.otel_traces")
    source.setup()
    assert source.turns
    late = [s for s in finished if _call_of(s) not in early]
    for batch in ([s for s in late if not _is_call(s)], [s for s in late if _is_call(s)], late):
        write_spans(source, batch, table="turns.otel_traces")
        got = anomalies(turns=True)
        assert got == anomalies(turns=False)
    assert got == [_json(anomalies_report(recorded["engine"], filters)) for filters in windows]
    conversation_calls = sum(
        1 for s in finished if _is_call(s) and s.attributes.get(telemetry.CONVERSATION_ID) is not None
    )
    counted = source.rows("SELECT count() AS n FROM turns.compactobs_turns FINAL")[0]["n"]
    assert counted == conversation_calls
    source.execute("DROP TABLE turns.compactobs_turns")
    source.detect_typed()
    assert source.typed and not source.turns
    assert anomalies(turns=False) == got


def test_a_late_call_settles_the_waste_of_its_conversation_s_call_in_an_earlier_slot(
    recorded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversation's call P writes to the 5-minute cache; its next call M starts in the next slot, within
    5 minutes; the call after, N, 10 minutes later (the conversation's spans moved in time so). Without M,
    P's writes are wasted (N came too late) and P is settled in its slot; M arrives late, in another slot:
    P's slot must be recomputed (M is its new next call), so P is no longer wasted, and M is if it wrote
    5-minute entries, for N is 10 minutes after it. From the slots as from the calls."""
    finished = list(recorded["finished"])
    calls_by_conversation: dict[str, list[Any]] = {}
    for span in finished:
        if _is_call(span) and span.attributes.get(telemetry.CONVERSATION_ID):
            calls_by_conversation.setdefault(span.attributes[telemetry.CONVERSATION_ID], []).append(span)
    p, m, n = next(
        (run[k], run[k + 1], run[k + 2])
        for run in (sorted(c, key=lambda s: s.start_time) for c in calls_by_conversation.values())
        for k in range(len(run) - 2)
        if run[k].attributes.get(telemetry.TOKENS_CACHE_WRITE_5M)
        and run[k + 1].start_time - run[k].end_time < 60 * 10**9
    )
    conversation = p.attributes[telemetry.CONVERSATION_ID]
    in_conversation = {s.context.span_id for s in calls_by_conversation[conversation]}
    slot_ns = 15 * 60 * 10**9
    # P starts just before a slot's end, M just after it; N and the later calls 10 minutes later still.
    gap = m.start_time - p.start_time
    shift = (p.start_time // slot_ns + 1) * slot_ns - gap // 2 - p.start_time
    later = {s.context.span_id for s in calls_by_conversation[conversation] if s.start_time >= n.start_time}

    def moved(span: Any) -> Any:
        call = _call_of(span)
        if call not in in_conversation:
            return span
        by = shift + (10 * 60 * 10**9 if call in later else 0)
        out = copy.copy(span)
        out._start_time, out._end_time = span.start_time + by, span.end_time + by
        return out

    spans = [moved(s) for s in finished]
    assert (spans[finished.index(p)].start_time // slot_ns) + 1 == spans[
        finished.index(m)
    ].start_time // slot_ns
    source = _late_copy(recorded["source"], "gap")
    write_spans(source, [s for s in spans if _call_of(s) != m.context.span_id], table="gap.otel_traces")
    source.setup()
    reads = _slot_reads(monkeypatch)
    now = recorded["summary"].started_at + timedelta(hours=3)
    filters = build_filters(None, None, "UTC")

    def wasted() -> int:
        reads.clear()
        got = _json(cache_report(_fresh(source), filters, ("model",), now=now))
        assert sorted(reads) == ["cache", "open"]
        assert got == _json(cache_report(_fresh(source, slotted=False), filters, ("model",), now=now))
        return int(got["totals"]["wasted_write_calls"])

    before = wasted()
    write_spans(source, [s for s in spans if _call_of(s) == m.context.span_id], table="gap.otel_traces")
    m_writes_5m = 1 if m.attributes.get(telemetry.TOKENS_CACHE_WRITE_5M) else 0
    assert wasted() == before - 1 + m_writes_5m


def test_a_stored_max_compactions_is_the_same_json(recorded: dict[str, Any], postgres_url: str) -> None:
    """`compactobs.conversation(..., max_compactions=2)` compacting 3 times, recorded into PostgreSQL and
    written into a spans table of its own in the fixture's chdb directory: the same budget finding."""
    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    with Simulator() as sim:
        record_capped_conversation(postgres_url, sim, "capped-ch", provider)
    source = ClickHouseSource(f"chdb://{recorded['dir']}", table="capped_traces")
    engine = store.open_database(postgres_url)
    try:
        write_spans(source, kept.get_finished_spans(), table="capped_traces")
        filters = build_filters(None, None, "UTC")
        expected = _json(anomalies_report(engine, filters))
        [finding] = [f for f in expected["findings"] if f["kind"] == "budget_exceeded"]
        assert finding["evidence"]["max_compactions"] == 2 and finding["evidence"]["compactions"] == 3
        assert _json(anomalies_report(source, filters)) == expected
    finally:
        engine.dispose()
        source.close()


def test_typed_tables_of_an_older_setup_are_not_read(recorded: dict[str, Any]) -> None:
    """Typed tables made before the store gained a column (here: budget_max_compactions dropped from them)
    would fail the reports that read it: the spans are read instead, with the same JSON."""
    source = copy.copy(recorded["source"])
    source.execute("CREATE DATABASE IF NOT EXISTS older")
    source.table, source.typed = "older.otel_traces", False
    write_spans(source, recorded["finished"], table="older.otel_traces")
    source.setup()
    source.execute("ALTER TABLE older.compactobs_calls DROP COLUMN budget_max_compactions")
    assert source.detect_typed() is False
    filters = build_filters(None, None, "UTC")
    assert _json(anomalies_report(source, filters)) == _json(anomalies_report(recorded["engine"], filters))


def test_setup_again_upgrades_typed_tables_of_an_older_setup(recorded: dict[str, Any]) -> None:
    """`clickhouse setup` run again over tables that lack a column (budget_usd dropped here: the demo's
    looping conversation has a $2 budget; and compactions_failed from the turns table) adds it, fills it for
    the rows already there and for spans inserted later (the views are made again), and the typed tables and
    the turns are read again, with the store's JSON."""
    source = copy.copy(recorded["source"])
    source.execute("CREATE DATABASE IF NOT EXISTS upgraded")
    source.table, source.typed = "upgraded.otel_traces", False
    finished = list(recorded["finished"])
    calls = [
        span
        for span in finished
        if (span.attributes or {}).get(telemetry.SPAN_KIND) == telemetry.SPAN_KIND_CALL
    ]
    write_spans(source, finished[: len(finished) // 2], table="upgraded.otel_traces")
    source.setup()
    source.execute("ALTER TABLE upgraded.compactobs_calls DROP COLUMN budget_usd")
    # The turns table too: without a column the per-conversation rules read, the calls are read instead.
    source.execute("ALTER TABLE upgraded.compactobs_turns DROP COLUMN compactions_failed")
    assert source.detect_typed() is False
    source.setup()
    assert source.detect_typed() is True
    assert source.turns
    write_spans(source, finished[len(finished) // 2 :], table="upgraded.otel_traces")
    budgets = source.rows("SELECT countIf(budget_usd IS NOT NULL) AS n FROM upgraded.compactobs_calls FINAL")[
        0
    ]["n"]
    with_budget = [span for span in calls if (span.attributes or {}).get(telemetry.BUDGET_USD) is not None]
    assert budgets == len(with_budget) > 0
    turns = source.rows(
        "SELECT count() AS n, countIf(compactions_failed IS NOT NULL) AS failed "
        "FROM upgraded.compactobs_turns FINAL"
    )[0]
    in_conversations = [span for span in calls if (span.attributes or {}).get(telemetry.CONVERSATION_ID)]
    counted = [
        span
        for span in in_conversations
        if (span.attributes or {}).get(telemetry.COMPACTIONS_FAILED) is not None
    ]
    assert (turns["n"], turns["failed"]) == (len(in_conversations), len(counted))
    assert turns["failed"] > 0
    filters = build_filters(None, None, "UTC")
    expected = _json(anomalies_report(recorded["engine"], filters))
    assert any(f["kind"] == "budget_exceeded" for f in expected["findings"])
    assert _json(anomalies_report(source, filters)) == expected


def test_a_clickhouse_url_reads_over_http_with_the_same_json(
    recorded: dict[str, Any], demo_recording: DemoRecording
) -> None:
    """`--db clickhouse://...`: clickhouse-connect over HTTP (its settings as URL parameters, its first
    queries, the result format) to the fixture's chdb engine behind ClickHouse's HTTP interface
    (`tests/clickhouse_http.py`: no ClickHouse server installs here): every report as on the store, from the
    library and from the CLI; an engine error is one line."""
    from compactobs.reports.sources.clickhouse.source import open_source

    filters = build_filters(None, None, "Europe/Paris")
    now = datetime.now(timezone.utc)
    conversation = recorded["summary"].conversations[1].id
    reports = [
        lambda engine: cost_report(engine, filters, ("model", "day")),
        lambda engine: cost_report(engine, filters, ("conversation",)),
        lambda engine: cache_report(engine, filters, ("model",), now=now),
        lambda engine: ops_report(engine, filters),
        lambda engine: anomalies_report(engine, filters),
        lambda engine: conversation_report(engine, filters, conversation),
    ]
    with http_front(recorded["source"]._session) as front:
        url = f"clickhouse://default@127.0.0.1:{front.server_port}/default"
        with open_source(url) as source:
            assert source._session is None and source._client is not None
            for make in reports:
                assert _json(make(source)) == _json(make(recorded["engine"]))
        # compactobs' reads reached the server with its output settings as URL parameters (its parser takes
        # integers unquoted and decimals quoted).
        reads = [given for sql, given in front.queries if "output_format_json_quote_decimals" in given]
        assert reads and all(given["output_format_json_quote_64bit_integers"] == "0" for given in reads)
        args = ["report", "cost", "--by", "model,day", "--tz", "UTC", "--format", "json"]
        code, over_http, err = run("--db", url, *args)
        assert code == 0, err
        assert json.loads(over_http) == json.loads(run("--db", demo_recording.url, *args)[1])
        message = one_line_error(*run("--db", url, "--clickhouse-table", "no_such", "report", "ops")[::2])
        assert "no_such" in message


def test_the_cli_reads_chdb_and_refuses_writes_in_one_line(
    recorded: dict[str, Any], demo_recording: DemoRecording
) -> None:
    """Last in the module: the CLI opens (and closes) chdb on the fixture's directory."""
    chdb_url = f"chdb://{recorded['dir']}"
    for report in (["cost", "--by", "model,day"], ["ops"], ["anomalies"]):
        args = ["report", *report, "--tz", "UTC", "--format", "json"]
        code, on_store, _ = run("--db", demo_recording.url, *args)
        assert code == 0
        code, on_clickhouse, err = run("--db", chdb_url, *args)
        assert code == 0, err
        assert json.loads(on_clickhouse) == json.loads(on_store)
    for command in (["reprice"], ["db", "upgrade"], ["db", "status"]):
        message = one_line_error(*run("--db", chdb_url, *command)[::2])
        assert "ClickHouse source" in message and "read-only" in message
    one_line_error(*run("--db", demo_recording.url, "clickhouse", "setup")[::2])
    message = one_line_error(*run("--db", chdb_url, "--clickhouse-table", "no_such", "report", "ops")[::2])
    assert "no table 'no_such'" in message
    missing = recorded["dir"] / "missing"
    assert "no chdb directory" in one_line_error(*run("--db", f"chdb://{missing}", "report", "ops")[::2])


def test_tune_is_the_same_json(recorded: dict[str, Any]) -> None:
    """`compactobs tune` over the Collector's spans says what it says over the store, budget included."""
    from compactobs.reports.tune import TuneOptions, tune, tune_json

    filters = build_filters(None, None, "UTC")
    options = TuneOptions(
        cache_ttls=("5m", "1h"), pause_after_compaction=True, budget_usd=Decimal(1), by="service"
    )
    expected = json.loads(tune_json(tune(recorded["engine"], filters, options)))
    got = json.loads(tune_json(tune(recorded["source"], filters, options)))
    assert expected["settings"] and expected["compactions"] and expected["budget"]
    assert got == expected


def test_source_cost_on_clickhouse_by_hand(recorded: dict[str, Any]) -> None:
    """Claude Code's calls as the collector makes them (its recorder, their `cost_usd` as the source's
    price) written into a spans table of their own: compactobs' price beside Claude Code's, per service."""
    from compactobs.collect.claude_code import CallRecorder
    from compactobs.reports.source_cost import source_cost_report
    from compactobs.usage import CallObservation, RequestFacts, normalise_usage

    model = "claude-sonnet-4-5"
    start = 1_796_032_800_000_000_000  # 2026-11-30T10:00Z
    calls = []
    for n, (usage, theirs) in enumerate(
        [
            ({"input_tokens": 1000, "output_tokens": 200}, 0.006),
            ({"input_tokens": 10000, "output_tokens": 1000, "cache_creation_input_tokens": 100000}, 0.645),
        ]
    ):
        observation = CallObservation(
            request=RequestFacts(model=model),
            start_ns=start + n * 10**9,
            end_ns=start + n * 10**9 + 5 * 10**8,
            request_id=f"req_cc{n}",
            response_model=model,
            conversation_id="cc-session",
            provider="anthropic",
        )
        observation.usage = normalise_usage(usage, model)
        observation.source_cost_usd = theirs
        observation.status_code = 200
        calls.append((f"request\x00req_cc{n}", observation))
    source = ClickHouseSource(f"chdb://{recorded['dir']}", table="claude_code_traces")
    try:
        write_spans(source, CallRecorder().spans(calls), table="claude_code_traces")
        report = source_cost_report(source, build_filters(None, None, "UTC"))
    finally:
        source.close()
    assert report.rows == [
        {
            "service": "claude-code",
            "calls": 2,
            "source_cost_usd": Decimal("0.651"),  # 0.006 + 0.645, as Claude Code sent them
            # 1,000 x $3/M + 200 x $15/M = 0.006; 10,000 x $3/M + 1,000 x $15/M + 100,000 x $3.75/M = 0.42
            "cost_usd": Decimal("0.426"),
            "difference_usd": Decimal("-0.225"),  # 0.426 - 0.651
            "unpriced_calls": 0,
        }
    ]
