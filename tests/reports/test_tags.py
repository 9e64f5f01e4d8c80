"""Tags: `compactobs.conversation(id, tags=...)` through the real SDK against the simulator, stored with the
calls, and `--by tag:KEY` in the reports on SQLite and PostgreSQL (ClickHouse: tests/reports/
test_clickhouse.py); the limits on keys and values, and hostile values escaped in what is printed.

Every call below is Sonnet 4.5 ($3 in, $15 out per MTok) answering 1,000 input and 200 output tokens:
1,000 x $3/M = $0.003, 200 x $15/M = $0.003, so $0.006 a call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

import compactobs
from compactobs import store
from compactobs.reports.cache import cache_report
from compactobs.reports.cost import cost_report
from compactobs.reports.render import render
from compactobs.reports.times import build_filters
from compactobs.store.models import calls
from compactobs.testing import Reply, message
from tests.cli import one_line_error, run
from tests.recording import recording

SONNET = "claude-sonnet-4-5"
USAGE = {"input_tokens": 1000, "output_tokens": 200}
HOSTILE = "acme\x1b[31m\u202e<b>|x"


def _ask(client: Any) -> None:
    client.messages.create(model=SONNET, max_tokens=8, messages=[{"role": "user", "content": "hi"}])


def record_tagged(url: str, processors: Sequence[SpanProcessor] = ()) -> None:
    """planner: 2 calls (customer acme, then a hostile customer); coder: 1 call; 1 call without tags."""
    with recording(url, service_name="app", processors=processors) as (sim, client):
        sim.enqueue(*[Reply(message(usage=USAGE, model=SONNET))] * 4)
        with compactobs.conversation("c1", tags={"agent": "planner", "customer": "acme"}):
            _ask(client)
        with compactobs.conversation("c1", tags={"agent": "planner", "customer": HOSTILE}):
            _ask(client)
        with compactobs.conversation("c2", tags={"agent": "coder"}):
            _ask(client)
        _ask(client)


D = Decimal


def _usd(value: float) -> Decimal:
    return D(str(value))


def _rows(report: Any) -> dict[Any, dict[str, Any]]:
    data = json.loads(render(report, "json"))
    return {tuple(row[key] for key in data["by"]): row for row in data["rows"]}


def test_tags_are_stored_and_group_the_cost_and_cache_reports(database_url: str) -> None:
    record_tagged(database_url)
    engine = store.open_database(database_url)
    try:
        with engine.connect() as connection:
            stored = sorted(row.tags or "" for row in connection.execute(select(calls.c.tags)))
        hostile = json.dumps(
            {"agent": "planner", "customer": HOSTILE}, ensure_ascii=False, separators=(",", ":")
        )
        # No tags: NULL (sorted first as ""); keys sorted, compact JSON.
        assert stored == ["", '{"agent":"coder"}', '{"agent":"planner","customer":"acme"}', hostile]
        filters = build_filters(None, None, "UTC")
        by_agent = _rows(cost_report(engine, filters, ["tag:agent"]))
        # planner 2 x $0.006 = $0.012; coder $0.006; the untagged call $0.006, a group with no value.
        assert set(by_agent) == {("planner",), ("coder",), (None,)}
        figures = {key: (row["calls"], _usd(row["cost_usd"])) for key, row in by_agent.items()}
        assert figures == {
            ("planner",): (2, D("0.012")),
            ("coder",): (1, D("0.006")),
            (None,): (1, D("0.006")),
        }
        two = _rows(cost_report(engine, filters, ["service", "tag:customer"]))
        assert set(two) == {("app", "acme"), ("app", HOSTILE), ("app", None)}
        assert two[("app", None)]["calls"] == 2  # coder's call and the untagged one: 2 x $0.006
        cache = _rows(cache_report(engine, filters, ["tag:agent"]))
        assert {key: row["calls"] for key, row in cache.items()} == {
            ("planner",): 2,
            ("coder",): 1,
            (None,): 1,
        }
    finally:
        engine.dispose()


def test_hostile_tag_values_are_escaped_in_every_format_and_the_command_groups(sqlite_url: str) -> None:
    record_tagged(sqlite_url)
    for fmt in ("table", "md", "csv"):
        code, out, err = run("--db", sqlite_url, "report", "cost", "--by", "tag:customer", "--format", fmt)
        assert code == 0, err
        assert "\x1b" not in out and "\u202e" not in out, fmt
        assert "acme" in out, fmt
        if fmt == "md":
            assert "<b>" not in out
    code, out, err = run("--db", sqlite_url, "report", "cost", "--by", "tag:agent", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["by"] == ["tag:agent"]
    assert sorted((row["tag:agent"] or "", row["calls"]) for row in data["rows"]) == [
        ("", 1),
        ("coder", 1),
        ("planner", 2),
    ]


def test_a_tag_key_no_tag_can_have_is_one_line(sqlite_url: str) -> None:
    store.upgrade_database(sqlite_url)
    for by in ("tag:", "tag:a b", "tag:" + "k" * 65, "tag:x'); DROP TABLE calls; --"):
        code, _, err = run("--db", sqlite_url, "report", "cost", "--by", by)
        assert "a tag key is 1 to 64" in one_line_error(code, err)


@pytest.mark.parametrize(
    "tags",
    [
        {"a b": "x"},
        {"": "x"},
        {"k" * 65: "x"},
        {"agent": ""},
        {"agent": 3},
        {"agent": "a\x00b"},
        {f"k{n}": "v" for n in range(17)},
    ],
)
def test_conversation_refuses_tags_it_would_not_keep(tags: dict[str, Any]) -> None:
    with pytest.raises(ValueError), compactobs.conversation("c", tags=tags):
        pass


def test_long_values_are_bounded_and_sixteen_tags_kept(sqlite_url: str) -> None:
    long = "v" * 1000
    with recording(sqlite_url) as (sim, client):
        sim.enqueue(Reply(message(usage=USAGE, model=SONNET)))
        with compactobs.conversation("c", tags={**{f"k{n:02d}": "v" for n in range(15)}, "long": long}):
            _ask(client)
    engine = store.open_database(sqlite_url)
    try:
        with engine.connect() as connection:
            tags = json.loads(connection.execute(select(calls.c.tags)).scalar_one())
    finally:
        engine.dispose()
    assert len(tags) == 16
    # A value beyond 256 characters is cut as a long id is: 256 characters, saying its length.
    assert len(tags["long"]) == 256 and "[1000 chars, sha256:" in tags["long"]


def test_clickhouse_groups_by_tag_as_the_store_does(postgres_url: str, tmp_path: Path) -> None:
    """The same spans in the Collector's otel_traces (chdb): cost, cache and tune by tag give the store's
    JSON, read from the spans' attributes and, after `clickhouse setup`, from the typed tables."""
    from compactobs.reports.sources.clickhouse.source import ClickHouseSource
    from compactobs.reports.tune import TuneOptions, tune, tune_report
    from tests.otel_traces import write_spans

    kept = InMemorySpanExporter()
    record_tagged(postgres_url, [SimpleSpanProcessor(kept)])
    source = ClickHouseSource(f"chdb://{tmp_path}")
    engine = store.open_database(postgres_url)
    try:
        write_spans(source, kept.get_finished_spans())
        filters = build_filters(None, None, "UTC")
        for typed in (False, True):
            if typed:
                source.setup()
                assert source.detect_typed()
            for by in (["tag:agent"], ["service", "tag:customer"], ["day", "tag:agent"]):
                expected = json.loads(render(cost_report(engine, filters, by), "json"))
                assert json.loads(render(cost_report(source, filters, by), "json")) == expected, (typed, by)
                expected = json.loads(render(cache_report(engine, filters, by), "json"))
                assert json.loads(render(cache_report(source, filters, by), "json")) == expected, (typed, by)
            options = TuneOptions(by="tag:agent")
            expected = json.loads(render(tune_report(tune(engine, filters, options)), "json"))
            assert json.loads(render(tune_report(tune(source, filters, options)), "json")) == expected, typed
    finally:
        engine.dispose()
        source.close()


def test_monthly_budgets_per_tag_value_alert(sqlite_url: str, tmp_path: Path) -> None:
    """`[monthly.tag.agent."planner"]`: planner's calls spent 2 x $0.006 = $0.012 this month, over $0.01;
    coder's $0.006 is under its $1 (and so is its projection: a month of $0.006 days is about $0.19)."""
    from compactobs.alerts.evaluate import AlertRules, evaluate
    from compactobs.rules import load_budgets

    record_tagged(sqlite_url)
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(
        '[monthly.tag.agent."planner"]\nusd = 0.01\n[monthly.tag.agent."coder"]\nusd = 1\n', encoding="utf-8"
    )
    engine = store.open_database(sqlite_url)
    try:
        alerts = evaluate(engine, build_filters(None, None, "UTC"), AlertRules(budgets=load_budgets(budgets)))
    finally:
        engine.dispose()
    burns = [a for a in alerts if a.kind in ("monthly_budget_exceeded", "forecast_over_budget")]
    assert [(a.kind, a.evidence["tag"], a.cost_usd) for a in burns] == [
        ("monthly_budget_exceeded", {"key": "agent", "value": "planner"}, D("0.012"))
    ]
    assert burns[0].message.startswith("tag agent='planner' spent $0.01 in ")


def test_serve_answers_by_tag_as_the_command_prints(sqlite_url: str) -> None:
    import urllib.request

    from compactobs.serve.app import create_app
    from tests.serving import serving

    record_tagged(sqlite_url)
    code, printed, err = run("--db", sqlite_url, "report", "cost", "--by", "tag:agent", "--format", "json")
    assert code == 0, err
    engine = store.open_database(sqlite_url)
    try:
        with (
            serving(create_app(engine)) as base,
            urllib.request.urlopen(f"{base}/api/report/cost?by=tag:agent") as response,
        ):
            served = json.loads(response.read())
    finally:
        engine.dispose()
    assert served == json.loads(printed)
    assert {row["tag:agent"] for row in served["rows"]} == {"planner", "coder", None}
