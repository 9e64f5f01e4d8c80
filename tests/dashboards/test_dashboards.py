"""dashboards/: the committed JSON is what the generator makes; a lint of both dashboards; and every SQL query
of the PostgreSQL dashboard run on the real server with Grafana's macros expanded (tests/grafana_macros.py)
for a fixed range, each returning rows whose figures equal `compactobs report ... --format json`.

The store is tests/reports/test_cost.py's (its docstring works its figures by hand) with, added here:
- top-level usage on its calls: A 1,000 in / 500 out, B 200 / 300 (its message; the compaction is left out),
  C 4,000 / 1,000, D 100 / 50: 5,300 + 1,850 = 7,150 tokens shown against 25,300 + 2,850 = 28,150 billed:
  21,000 / 28,150 left out;
- 20 calls in the hour from 2025-03-12 14:00 UTC, 3 of them failed with HTTP 429 (no usage): 15% > 10%,
  an error burst;
- P, 2025-03-08 12:00 UTC, haiku, 50,000 uncached input tokens: $0.05, the range before.
- conversation c1 (A then B) stored a $0.05 budget: A's 0.021 is within it, A + B's 0.0807 over it, so
  the guard-breach annotation marks B (2025-03-10 09:02 UTC); B compacted once: the compaction annotation
  marks B too.
The range is 2025-03-10 to 2025-03-13 (UTC): its previous range, 2025-03-07 to 2025-03-10, holds only P.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from compactobs.reports.dashboard import CONVERSATION_VAR, TOP_CONVERSATIONS, annotation_queries, sql_queries
from tests.cli import run
from tests.grafana_macros import expand
from tests.reports.test_cost import HAIKU, call_row, iteration_row, scenario, store_rows

generate = pytest.importorskip("dashboards.generate", reason="grafana-foundation-sdk needs Python 3.11")

D = Decimal
SINCE = datetime(2025, 3, 10, tzinfo=timezone.utc)
UNTIL = datetime(2025, 3, 13, tzinfo=timezone.utc)
WHOLE = "3650d"
"""An interval that puts the whole range in one bucket."""
TOP_LEVEL = {"A": (1000, 500), "B": (200, 300), "C": (4000, 1000), "D": (100, 50)}
CONTEXT = {"a": 13000, "b": 13200}
"""c1's context after each call (its last message iteration's total input), against a 50,000 trigger."""


def _store() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    calls, iterations = scenario()
    for row in calls:
        shown = TOP_LEVEL.get(row["call_id"].upper())
        if shown is not None:
            row["top_level_input_tokens"], row["top_level_output_tokens"] = shown
        if row["conversation_id"] == "c1":
            row["budget_usd"] = D("0.05")
            row["compaction_trigger"] = 50000
            row["context_tokens"] = CONTEXT[row["call_id"]]
    for n in range(20):
        failed = n < 3
        calls.append(
            call_row(
                f"burst{n:02d}",
                f"2025-03-12T14:{n:02d}:00",
                status="ERROR" if failed else "OK",
                error_type="429" if failed else None,
                http_status=429 if failed else 200,
                attempts=3 if failed else 1,
                **({"input_tokens": None, "output_tokens": None, "priced": None} if failed else {}),
                iterations_count=0 if failed else 1,
            )
        )
        if not failed:
            iterations.append(iteration_row(f"burst{n:02d}", 0, f"2025-03-12T14:{n:02d}:00"))
    calls.append(
        call_row(
            "P",
            "2025-03-08T12:00:00",
            request_model=HAIKU,
            response_model=HAIKU,
            input_tokens=50000,
            cost_usd=D("0.05"),
            cost_input_usd=D("0.05"),
        )
    )
    iterations.append(
        iteration_row("P", 0, "2025-03-08T12:00:00", model=HAIKU, input_tokens=50000, cost_usd=D("0.05"))
    )
    return calls, iterations


@pytest.fixture(scope="module")
def store_url(module_postgres_url: str) -> str:
    store_rows(module_postgres_url, *_store())
    return module_postgres_url


@pytest.fixture(scope="module")
def dashboard_sql() -> dict[str, Any]:
    return {q.key: q for q in sql_queries()}


def query(
    url: str, sql: str, interval: str = "1h", variables: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            result = connection.execute(text(expand(sql, SINCE, UNTIL, interval, variables)))
            return [dict(row) for row in result.mappings()]
    finally:
        engine.dispose()


def report(url: str, name: str, *args: str) -> dict[str, Any]:
    code, out, err = run(
        "--db", url, "report", name, "--since", "2025-03-10", "--until", "2025-03-12", "--tz", "UTC",
        *args, "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def close(value: Any, expected: Any) -> bool:
    if value is None or expected is None:
        return value is expected
    return abs(D(str(value)) - D(str(expected))) <= D("0.000001")


def iso_hour(epoch_s: Any) -> str:
    return f"{datetime.fromtimestamp(float(epoch_s), timezone.utc):%Y-%m-%d %H:00}"


# -- the committed files and their lint -----------------------------------------------------------------


def test_committed_json_is_what_the_generator_makes() -> None:
    for path, made in generate.outputs().items():
        assert path.read_text(encoding="utf-8") == made, f"{path.name}: run python -m dashboards.generate"


def _boards() -> list[dict[str, Any]]:
    return [json.loads(text) for text in generate.outputs().values()]


def _queries_of(panel: dict[str, Any]) -> list[str]:
    return [t.get("rawSql") or t.get("expr") for t in panel["targets"]]


def test_lint() -> None:
    for board in _boards():
        panels = board["panels"]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), "panel ids are unique"
        cells: dict[tuple[int, int], int] = {}
        for p in panels:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"panels {cells.get((x, y))} and {p['id']} overlap"
                    cells[(x, y)] = p["id"]
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        for p in panels:
            refs = [p["datasource"], *(t["datasource"] for t in p["targets"])]
            assert all(ref["uid"] == "${datasource}" for ref in refs), "every data source is the variable"
            assert p["description"], "every panel says its formula"
            assert p["fieldConfig"]["defaults"]["unit"] in ("currencyUSD", "percentunit", "s", "short")
            for q in _queries_of(p):
                uses_range = (
                    ("$__unixEpochFrom()" in q and "$__unixEpochTo()" in q)
                    or ("$__fromTime_ms" in q and "$__toTime_ms" in q)
                    or "$__timeFilter(" in q
                    or "$__range" in q
                    or "$__interval" in q
                    or "$__rate_interval" in q
                )
                assert uses_range, f"panel {p['title']!r}: a query that ignores the time range"
    assert 'uid": "' not in json.dumps(_boards()).replace('"uid": "${datasource}"', "").replace(
        '"uid": "compactobs-', ""
    ), "no hard-coded data source uid"


def test_json_round_trips_through_the_sdk_types() -> None:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    generate.register_sql_query()
    for board in _boards():
        typed = Dashboard.from_json(board)
        # The SQL annotations are added after the SDK's types: its AnnotationTarget has no SQL field.
        sql_annotations = [a for a in board.get("annotations", {}).get("list", []) if "rawSql" in a["target"]]
        without = {**board, "annotations": {"list": []}} if sql_annotations else board
        assert json.loads(json.dumps(Dashboard.from_json(without), cls=JSONEncoder)) == without
        typed = Dashboard.from_json(without)
        # Queries come back as our SqlQuery/ClickHouseQuery or the SDK's Prometheus query, not untyped bags.
        kinds = {type(t).__name__ for p in typed.panels or [] for t in p.targets or []}
        assert kinds in ({"SqlQuery"}, {"ClickHouseQuery"}, {"Dataquery"}), kinds


def test_generator_check_mode() -> None:
    assert generate.main(["--check"]) == 0


# -- every SQL query on the real PostgreSQL --------------------------------------------------------------


def test_every_query_returns_rows(store_url: str, dashboard_sql: dict[str, Any]) -> None:
    for key, panel_query in dashboard_sql.items():
        chosen = {CONVERSATION_VAR: "c1"} if key.startswith("conversation_") else None
        rows = query(store_url, panel_query.sql, variables=chosen)
        assert rows, f"{key}: no rows"
        assert any(v is not None for row in rows for v in row.values()), key
        if panel_query.format == "time_series":
            assert all(row["time"] is not None for row in rows)
            times = [float(row["time"]) for row in rows]
            assert times == sorted(times), f"{key}: time series sorted by time"


def test_spend_against_the_previous_range(store_url: str, dashboard_sql: dict[str, Any]) -> None:
    (row,) = query(store_url, dashboard_sql["spend"].sql)
    # By hand: 0.021 + 0.0597 + 0.009 in range; P's 0.05 before.
    assert (row["cost_usd"], row["prev_cost_usd"]) == (D("0.0897"), D("0.05"))
    assert close(row["delta_cost_pct"], D("0.0397") / D("0.05"))
    cost = report(store_url, "cost", "--compare", "prev", "--by", "model")
    assert close(row["cost_usd"], cost["totals"]["cost_usd"])
    assert close(row["prev_cost_usd"], cost["compare"]["totals"]["cost_usd"])
    assert close(row["delta_cost_pct"], cost["compare"]["delta_pct"]["cost_usd"])


def test_cost_over_time_by_model(store_url: str, dashboard_sql: dict[str, Any]) -> None:
    rows = query(store_url, dashboard_sql["cost_by_model"].sql)
    got = {(iso_hour(r["time"]), r["metric"]): r["cost_usd"] for r in rows}
    expected = {
        (r["hour"], r["model"]): r["cost_usd"]
        for r in report(store_url, "cost", "--by", "hour", "--by", "model")["rows"]
        if r["cost_usd"] is not None
    }
    assert got.keys() == expected.keys()
    assert [k for k in got if not close(got[k], expected[k])] == []
    # By hand: B's compaction ran at haiku, 0.025 of B's 0.0597, in the 09:00 hour with A.
    assert got[("2025-03-10 09:00", HAIKU)] == D("0.025")


def test_cost_by_token_class(store_url: str, dashboard_sql: dict[str, Any]) -> None:
    (row,) = query(store_url, dashboard_sql["cost_by_token_class"].sql)
    by_hand = ["0.0276", "0.022", "0.0066", "0.0075", "0.006", "0.02"]
    assert list(row.values()) == [D(v) for v in by_hand]
    totals = report(store_url, "cost")["totals"]
    assert all(close(row[name], totals[name]) for name in row)


def test_compactions_and_their_share(store_url: str, dashboard_sql: dict[str, Any]) -> None:
    (row,) = query(store_url, dashboard_sql["compactions"].sql)
    assert (row["compactions"], row["compaction_cost_usd"]) == (1, D("0.025"))
    totals = report(store_url, "cost")["totals"]
    assert row["compactions"] == totals["compactions"]
    assert close(row["compaction_share"], totals["compaction_share"])
    assert close(row["compaction_share"], D("0.025") / D("0.0897"))


def test_top_level_against_the_bill(store_url: str, dashboard_sql: dict[str, Any]) -> None:
    (row,) = query(store_url, dashboard_sql["top_level_vs_bill"].sql)
    assert row["top_level_input_tokens"] == 5300 and row["top_level_output_tokens"] == 1850
    totals = report(store_url, "cost")["totals"]
    assert (row["input_tokens"], row["output_tokens"]) == (totals["input_tokens"], totals["output_tokens"])
    assert (row["input_tokens"], row["output_tokens"]) == (25300, 2850)
    assert close(row["left_out_share"], D(21000) / D(28150))


def test_cache_hit_ratio_and_net_savings(store_url: str, dashboard_sql: dict[str, Any]) -> None:
    rows = query(store_url, dashboard_sql["cache_over_time"].sql)
    expected = {r["hour"]: r for r in report(store_url, "cache", "--by", "hour")["rows"]}
    assert {iso_hour(r["time"]) for r in rows} == expected.keys()
    for row in rows:
        want = expected[iso_hour(row["time"])]
        assert close(row["hit_ratio"], want["hit_ratio"]), row
        assert close(row["net_usd"], want["net_usd"] or 0), row
    (whole,) = query(store_url, dashboard_sql["cache_over_time"].sql, WHOLE)
    # tests/reports/test_cache.py's figures by hand: 22,000 / 50,300 read; 0.0594 saved - 0.0045 premium.
    # The burst's calls have no tokens.
    assert close(whole["hit_ratio"], D(22000) / D(50300)) and close(whole["net_usd"], D("0.0549"))


def test_top_conversations(store_url: str, dashboard_sql: dict[str, Any]) -> None:
    rows = query(store_url, dashboard_sql["top_conversations"].sql)
    assert len(rows) <= TOP_CONVERSATIONS
    expected = {
        r["conversation_id"]: r
        for r in report(store_url, "cost", "--by", "conversation")["rows"]
        if r["cost_usd"] is not None and r["conversation_id"] is not None
    }
    assert [r["conversation_id"] for r in rows] == ["c1", "c2"]  # 0.0807 and 0.009, by hand
    for row in rows:
        want = expected[row["conversation_id"]]
        for name in ("calls", "error_calls", "compactions"):
            assert row[name] == want[name], name
        assert close(row["cost_usd"], want["cost_usd"])
        assert close(row["compaction_cost_usd"], want["compaction_cost_usd"] or None)


def test_anomalies(store_url: str, dashboard_sql: dict[str, Any]) -> None:
    findings = report(store_url, "anomalies")["findings"]
    (burst,) = query(store_url, dashboard_sql["error_bursts"].sql)
    (found,) = [f["evidence"] for f in findings if f["kind"] == "error_burst"]
    assert burst["hour_start"] == found["hour_start_ms"]
    assert (burst["calls"], burst["error_calls"], burst["http_429"]) == (20, 3, 3)
    for name in ("calls", "error_calls", "http_429", "http_529", "retries"):
        assert burst[name] == found[name], name
    assert close(burst["share"], found["share"]) and burst["retries"] == 6
    (unpriced,) = query(store_url, dashboard_sql["unpriced_models"].sql)
    (model,) = [f["evidence"] for f in findings if f["kind"] == "unpriced_model"]
    assert unpriced["model"] == model["model"] == "mystery-1"
    for name in ("calls", "iterations", "conversations", "tokens"):
        assert unpriced[name] == model[name], name
    assert unpriced["tokens"] == 150


def test_error_rate_and_latency(store_url: str, dashboard_sql: dict[str, Any]) -> None:
    (row,) = query(store_url, dashboard_sql["errors_latency"].sql, WHOLE)
    ops = report(store_url, "ops")["totals"]
    assert close(row["error_rate"], ops["error_rate"])
    # 4 failed (E and 3 of the burst) of 25 calls.
    assert close(row["error_rate"], D(4) / D(25))
    for p in ("p50", "p95", "p99"):
        assert close(row[f"latency_{p}"] * 1000, ops[f"latency_{p}_ms"])
    hourly = query(store_url, dashboard_sql["errors_latency"].sql)
    assert {iso_hour(r["time"]) for r in hourly} >= {"2025-03-10 09:00", "2025-03-12 14:00"}


def test_the_conversation_panels(store_url: str, dashboard_sql: dict[str, Any]) -> None:
    """c1's calls, as `report conversation c1` lists them; nothing until a conversation is chosen."""
    chosen = {CONVERSATION_VAR: "c1"}
    assert query(store_url, dashboard_sql["conversation_calls"].sql) == []
    rows = query(store_url, dashboard_sql["conversation_calls"].sql, variables=chosen)
    code, out, err = run("--db", store_url, "report", "conversation", "c1", "--format", "json")
    assert code == 0, err
    listed = json.loads(out)["rows"]
    assert [r["call_id"] for r in rows] == [r["call_id"] for r in listed] == ["a", "b"]
    for row, want in zip(rows, listed, strict=True):
        assert (row["model"], row["compactions"]) == (want["model"], want["compactions"])
        assert (row["context_tokens"], row["trigger_tokens"]) == (
            want["context_tokens"],
            want["trigger_tokens"],
        )
        assert close(row["cost_usd"], want["cost_usd"])
    context = query(store_url, dashboard_sql["conversation_context"].sql, variables=chosen)
    assert [r["compacted_at"] is not None for r in context] == [False, True]  # B compacted
    assert [float(r["time"]) for r in context] == [float(r["time"]) for r in rows]


def test_annotations_mark_compactions_and_guard_breaches(store_url: str) -> None:
    found = {q.key: q.sql for q in annotation_queries()}
    b_time = datetime(2025, 3, 10, 9, 2, tzinfo=timezone.utc).timestamp()
    (breach,) = query(store_url, found["guard_breaches"])
    assert float(breach["time"]) == b_time and breach["text"] == "over its stored budget: c1"
    compactions = query(store_url, found["compactions"])
    assert [(float(r["time"]), r["text"]) for r in compactions] == [(b_time, "compaction in c1")]
    # The selection narrows them: another conversation has neither.
    assert query(store_url, found["guard_breaches"], variables={CONVERSATION_VAR: "c2"}) == []
    # The committed dashboards carry them, with the SQL the data source runs.
    board = json.loads(generate.POSTGRES_FILE.read_text(encoding="utf-8"))
    sqls = [a["target"]["rawSql"] for a in board["annotations"]["list"]]
    assert sqls == [found["compactions"], found["guard_breaches"]]


def test_top_conversations_link_to_the_conversation_panels() -> None:
    for path in (generate.POSTGRES_FILE, generate.CLICKHOUSE_FILE):
        board = json.loads(path.read_text(encoding="utf-8"))
        (top,) = [p for p in board["panels"] if p["title"].startswith("Top ")]
        (override,) = [
            o for o in top["fieldConfig"]["overrides"] if o["matcher"]["options"] == "conversation_id"
        ]
        (link,) = override["properties"][0]["value"]
        assert "var-conversation=${__value.raw:percentencode}" in link["url"]
        assert link["url"].startswith("/d/${__dashboard.uid}?")
        titles = [p["title"] for p in board["panels"]]
        assert "Conversation $conversation: its calls" in titles


def test_sql_has_one_time_filter_per_calls_scan(dashboard_sql: dict[str, Any]) -> None:
    # Every read of `calls` is bounded by the range on its indexed start_ms (a scan of all time is a bug).
    for key, q in dashboard_sql.items():
        scans = len(re.findall(r"FROM calls\b", q.sql))
        bounded = q.sql.count("start_ms >= $__unixEpochFrom()::bigint * 1000")
        bounded += q.sql.count("start_ms >= $__unixEpochFrom()::bigint * 1000 - (")
        assert bounded >= scans - q.sql.count("FROM calls AS later"), key


def test_previous_range_is_as_long_as_the_range() -> None:
    start, end = SINCE, UNTIL
    assert expand("$__unixEpochFrom() - ($__unixEpochTo() - $__unixEpochFrom())", start, end) == (
        f"{int(start.timestamp())} - ({int(end.timestamp())} - {int(start.timestamp())})"
    )
    assert int((start - (end - start)).timestamp()) == int((start - timedelta(days=3)).timestamp())


def test_provisioning_sets_no_uid() -> None:
    provisioning = generate.HERE / "provisioning"
    datasources = (provisioning / "datasources.yaml").read_text(encoding="utf-8")
    types = set(re.findall(r"^\s+type: (\S+)", datasources, re.MULTILINE))
    assert {generate.POSTGRES_TYPE, generate.PROMETHEUS_TYPE, generate.CLICKHOUSE_TYPE} <= types
    for path in provisioning.iterdir():
        assert not re.search(r"^\s*uid:", path.read_text(encoding="utf-8"), re.MULTILINE), path.name
