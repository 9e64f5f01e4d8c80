"""The ClickHouse dashboard (dashboards/compactobs-clickhouse.json): every query of the committed JSON run
on real chdb, over the Collector's `otel_traces` table, with the ClickHouse data source's macros expanded
(tests/grafana_macros.py `expand_clickhouse`); each figure held to `compactobs report ... --format json` and
to the PostgreSQL dashboard's query on the same traffic.

The traffic is the demo's workload (`compactobs.demo`: caching, compactions, 429/529 errors, an unpriced
model) through the real SDK against the loopback simulator, recorded into PostgreSQL; its finished spans
are kept by an InMemorySpanExporter on the same TracerProvider and written into `otel_traces` as the
Collector's ClickHouse exporter writes them (opentelemetry-collector-contrib, exporter/clickhouseexporter:
`exporter_traces.go` `pushTraceData` and `internal/sql_templates/traces_table.sql`; pdata's
`Value.AsString` for attribute values; see tests/otel_traces.py).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from compactobs import semconv as t
from compactobs.reports.dashboard import (
    CONVERSATION_VAR,
    GRAFANA_CLICKHOUSE,
    SPANS_TABLE,
    TOP_CONVERSATIONS,
    annotation_queries,
    sql_queries,
)
from compactobs.reports.sources.clickhouse import client as clickhouse_client
from compactobs.reports.sources.clickhouse.client import quote
from compactobs.reports.sources.clickhouse.ddl import otel_traces_ddl
from tests.cli import run
from tests.dashboards.test_dashboards import close
from tests.grafana_macros import expand, expand_clickhouse

generate = pytest.importorskip("dashboards.generate", reason="grafana-foundation-sdk needs Python 3.11")

D = Decimal
WHOLE = "3650d"
"""An interval that puts the whole range in one bucket."""
TABLE = SPANS_TABLE


# `traffic`, the demo's spans in chdb beside its PostgreSQL store: a session fixture
# (tests/dashboards/conftest.py).


@pytest.fixture(scope="module")
def committed() -> dict[str, str]:
    """key -> rawSql of each panel of the committed ClickHouse JSON (what Grafana is given)."""
    board = json.loads(generate.CLICKHOUSE_FILE.read_text(encoding="utf-8"))
    keys = list(generate.POSTGRES_PANELS)
    queries = [p["targets"][0]["rawSql"] for p in board["panels"]]
    assert len(queries) == len(keys)
    return dict(zip(keys, queries, strict=True))


def clickhouse(
    traffic: dict[str, Any],
    sql: str,
    interval: str = "1h",
    span: tuple[datetime, datetime] | None = None,
    variables: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The query as the plugin sends it (its own SETTINGS kept), run on the chdb session, values by type."""
    since, until = span or (traffic["since"], traffic["until"])
    expanded = expand_clickhouse(sql, since, until, interval, variables)
    session = traffic["source"]._session
    # Decimals as JSON strings, so that they parse exactly (the plugin reads them natively).
    session.query("SET output_format_json_quote_decimals = 1")
    result = session.query(expanded, "JSONCompactEachRowWithNamesAndTypes")
    rows = clickhouse_client.records(result.data())
    for row in rows:
        if isinstance(row.get("time"), str):  # DateTime64 in UTC, as epoch seconds like PostgreSQL's bucket
            row["time"] = datetime.fromisoformat(row["time"]).replace(tzinfo=timezone.utc).timestamp()
    return rows


def postgres(traffic: dict[str, Any], key: str, interval: str = "1h") -> list[dict[str, Any]]:
    (query,) = [q for q in sql_queries() if q.key == key]
    engine = create_engine(traffic["pg"])
    try:
        with engine.connect() as connection:
            sql = text(expand(query.sql, traffic["since"], traffic["until"], interval))
            return [dict(row) for row in connection.execute(sql).mappings()]
    finally:
        engine.dispose()


def report(traffic: dict[str, Any], name: str, *args: str) -> dict[str, Any]:
    code, out, err = run(
        "--db", traffic["pg"], "report", name, "--since", f"{traffic['since']:%Y-%m-%d}",
        "--until", f"{traffic['until']:%Y-%m-%d}", "--tz", "UTC", *args, "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def same_rows(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """The same rows, in the same order, with the same columns: money (`*_usd`, sums of the stored
    figures) exactly equal, counts and names equal, ratios and computed money to 1e-6."""
    assert len(got) == len(expected), (got, expected)
    for row, want in zip(got, expected, strict=True):
        assert list(row) == list(want)
        for name, value in row.items():
            if name == "time":
                assert float(value) == float(want[name])
            elif isinstance(want[name], (int, str)) or (name.endswith("_usd") and name != "net_usd"):
                assert value == want[name], (name, value, want[name])
            else:
                assert close(value, want[name]), (name, value, want[name])


def hour(epoch_s: float) -> str:
    return f"{datetime.fromtimestamp(epoch_s, timezone.utc):%Y-%m-%d %H:00}"


# -- the committed file ----------------------------------------------------------------------------------


def test_committed_json_is_what_the_generator_makes() -> None:
    made = generate.outputs()[generate.CLICKHOUSE_FILE]
    assert generate.CLICKHOUSE_FILE.read_text(encoding="utf-8") == made, "run python -m dashboards.generate"


def test_panels_read_the_spans_table_as_a_constant_and_the_plugin_macros(committed: dict[str, str]) -> None:
    board = json.loads(generate.CLICKHOUSE_FILE.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert "spans_table" not in variables  # a URL sets a variable: the table is no variable
    assert variables["datasource"]["query"] == generate.CLICKHOUSE_TYPE
    assert {q.key: q.sql for q in sql_queries(GRAFANA_CLICKHOUSE)} == committed
    for key, sql in committed.items():
        assert f"FROM {TABLE}\n" in sql and "$__fromTime_ms" in sql and "$__toTime_ms" in sql, key
        assert sql.rstrip().endswith("SETTINGS join_use_nulls = 1, cast_keep_nullable = 1"), key
        assert "percentile_cont" not in sql and "LIMIT -1" not in sql, key


# -- every query on chdb, against PostgreSQL's dashboard and the reports -----------------------------------


def test_every_query_runs_and_equals_the_postgres_dashboard(
    traffic: dict[str, Any], committed: dict[str, str]
) -> None:
    formats = {q.key: q.format for q in sql_queries(GRAFANA_CLICKHOUSE)}
    for key, sql in committed.items():
        if key.startswith("conversation_"):
            continue  # empty until a conversation is chosen: see the test of the conversation panels
        for interval in ("1h", WHOLE):
            got = clickhouse(traffic, sql, interval)
            if formats[key] == "time_series":
                assert got, key
                times = [row["time"] for row in got]
                assert times == sorted(times), f"{key}: time series sorted by time"
            same_rows(got, postgres(traffic, key, interval))


def test_spend(traffic: dict[str, Any], committed: dict[str, str]) -> None:
    (row,) = clickhouse(traffic, committed["spend"])
    cost = report(traffic, "cost", "--compare", "prev")
    assert row["cost_usd"] > 0 and row["cost_usd"] == D(str(cost["totals"]["cost_usd"]))
    # The range before holds no traffic: 0, and no change in % (NULL, not a division by 0).
    assert row["prev_cost_usd"] == 0 and row["delta_cost_usd"] == row["cost_usd"]
    assert row["delta_cost_pct"] is None


def test_cost_over_time_by_model(traffic: dict[str, Any], committed: dict[str, str]) -> None:
    got = {
        (hour(r["time"]), r["metric"]): r["cost_usd"] for r in clickhouse(traffic, committed["cost_by_model"])
    }
    expected = {
        (r["hour"], r["model"]): D(str(r["cost_usd"]))
        for r in report(traffic, "cost", "--by", "hour", "--by", "model")["rows"]
        if r["cost_usd"] is not None
    }
    assert got == expected


def test_cost_by_token_class_and_compactions(traffic: dict[str, Any], committed: dict[str, str]) -> None:
    totals = report(traffic, "cost")["totals"]
    (classes,) = clickhouse(traffic, committed["cost_by_token_class"])
    assert all(isinstance(v, Decimal) for v in classes.values()), "money stays Decimal"
    assert {k: v for k, v in classes.items()} == {k: D(str(totals[k])) for k in classes}
    (row,) = clickhouse(traffic, committed["compactions"])
    assert row["compactions"] == totals["compactions"] > 0
    assert row["compaction_cost_usd"] == D(str(totals["compaction_cost_usd"]))
    assert close(row["compaction_share"], totals["compaction_share"])


def test_top_level_against_the_bill(traffic: dict[str, Any], committed: dict[str, str]) -> None:
    (row,) = clickhouse(traffic, committed["top_level_vs_bill"])
    totals = report(traffic, "cost")["totals"]
    assert (row["input_tokens"], row["output_tokens"]) == (totals["input_tokens"], totals["output_tokens"])
    shown = row["top_level_input_tokens"] + row["top_level_output_tokens"]
    billed = row["input_tokens"] + row["output_tokens"]
    assert close(row["left_out_share"], D(billed - shown) / D(billed))


def test_cache_hit_ratio_and_net_savings(traffic: dict[str, Any], committed: dict[str, str]) -> None:
    rows = clickhouse(traffic, committed["cache_over_time"])
    expected = {r["hour"]: r for r in report(traffic, "cache", "--by", "hour")["rows"]}
    assert {hour(r["time"]) for r in rows} == expected.keys()
    for row in rows:
        want = expected[hour(row["time"])]
        assert close(row["hit_ratio"], want["hit_ratio"]), row
        assert close(row["net_usd"], want["net_usd"] or 0), row
    (whole,) = clickhouse(traffic, committed["cache_over_time"], WHOLE)
    totals = report(traffic, "cache")["totals"]
    assert whole["hit_ratio"] > 0 and close(whole["hit_ratio"], totals["hit_ratio"])
    assert close(whole["net_usd"], totals["net_usd"])


def test_top_conversations(traffic: dict[str, Any], committed: dict[str, str]) -> None:
    rows = clickhouse(traffic, committed["top_conversations"])
    ranked = sorted(
        (r for r in report(traffic, "cost", "--by", "conversation")["rows"] if r["cost_usd"] is not None),
        key=lambda r: (-D(str(r["cost_usd"])), r["conversation_id"]),
    )
    ranked = [r for r in ranked if r["conversation_id"] is not None][:TOP_CONVERSATIONS]
    assert [r["conversation_id"] for r in rows] == [r["conversation_id"] for r in ranked]
    for row, want in zip(rows, ranked, strict=True):
        for name in ("calls", "error_calls", "compactions"):
            assert row[name] == want[name], name
        assert row["cost_usd"] == D(str(want["cost_usd"]))


def test_anomalies(traffic: dict[str, Any], committed: dict[str, str]) -> None:
    findings = report(traffic, "anomalies")["findings"]
    bursts = [f["evidence"] for f in findings if f["kind"] == "error_burst"]
    got = clickhouse(traffic, committed["error_bursts"])
    assert [b["hour_start"] for b in got] == [f["hour_start_ms"] for f in bursts]
    for burst, found in zip(got, bursts, strict=True):
        for name in ("calls", "error_calls", "http_429", "http_529", "retries"):
            assert burst[name] == found[name], name
        assert close(burst["share"], found["share"])
    unpriced = clickhouse(traffic, committed["unpriced_models"])
    models = [f["evidence"] for f in findings if f["kind"] == "unpriced_model"]
    assert unpriced and [u["model"] for u in unpriced] == [m["model"] for m in models]
    for row, model in zip(unpriced, models, strict=True):
        for name in ("calls", "iterations", "conversations", "tokens"):
            assert row[name] == model[name], name


def test_error_rate_and_latency(traffic: dict[str, Any], committed: dict[str, str]) -> None:
    (row,) = clickhouse(traffic, committed["errors_latency"], WHOLE)
    ops = report(traffic, "ops")["totals"]
    assert row["error_rate"] > 0 and close(row["error_rate"], ops["error_rate"])
    for p in ("p50", "p95", "p99"):
        # The report rounds to 0.1 ms.
        assert abs(row[f"latency_{p}"] * 1000 - ops[f"latency_{p}_ms"]) <= 0.05 + 1e-9, p


def test_an_error_burst_in_another_spans_table(traffic: dict[str, Any], committed: dict[str, str]) -> None:
    """The demo has no error burst: 20 call spans written here, in another table, the dashboard generated
    for it (`generate.py --spans-table`), in the hour from 2025-03-12 14:00 UTC, 3 of them HTTP 429 after 2
    resends each. By hand: 3 / 20 = 15% > 10% of >= 20 calls, a burst; 6 retries; error rate 0.15."""
    source, table = traffic["source"], "burst_traces"
    source.execute(otel_traces_ddl(table))
    rows = []
    scope = quote(t.INSTRUMENTATION_SCOPE)
    for n in range(20):
        failed = n < 3
        attributes = {
            t.SPAN_KIND: t.SPAN_KIND_CALL,
            t.HTTP_STATUS_CODE: "429" if failed else "200",
            **({t.ERROR_TYPE: "429", t.HTTP_RESEND_COUNT: "2"} if failed else {}),
        }
        pairs = ", ".join(f"{quote(k)}, {quote(v)}" for k, v in attributes.items())
        start_ns = int(datetime(2025, 3, 12, 14, n, tzinfo=timezone.utc).timestamp()) * 10**9
        status = "STATUS_CODE_ERROR" if failed else "STATUS_CODE_UNSET"
        rows.append(
            f"(fromUnixTimestamp64Nano(toInt64({start_ns})), 'burst{n:02d}', {scope}, "
            f"map({pairs}), 1000000000, '{status}')"
        )
    source.execute(
        f"INSERT INTO {table} (Timestamp, SpanId, ScopeName, SpanAttributes, Duration, StatusCode) "
        f"VALUES {', '.join(rows)}"
    )
    span = (datetime(2025, 3, 10, tzinfo=timezone.utc), datetime(2025, 3, 13, tzinfo=timezone.utc))
    other = {p["title"]: p["targets"][0]["rawSql"] for p in generate.clickhouse_dashboard(table)["panels"]}
    by_key = {key: other[spec.title] for key, spec in generate.POSTGRES_PANELS.items()}
    (burst,) = clickhouse(traffic, by_key["error_bursts"], span=span)
    hour_start = int(datetime(2025, 3, 12, 14, tzinfo=timezone.utc).timestamp()) * 1000
    assert burst == {
        "hour_start": hour_start,
        "calls": 20,
        "error_calls": 3,
        "share": D("0.15"),
        "http_429": 3,
        "http_529": 0,
        "retries": 6,
    }
    (hourly,) = clickhouse(traffic, by_key["errors_latency"], span=span)
    assert hourly["error_rate"] == D("0.15") and hourly["latency_p50"] == 1.0


def test_annotations_and_conversation_panels_equal_the_postgres_dashboards(traffic: dict[str, Any]) -> None:
    """The compaction and guard-breach annotations, and a conversation's panels, on chdb and on PostgreSQL
    over the same traffic. The demo's research loop stored a $2 budget and crossed it: one breach."""
    engine = create_engine(traffic["pg"])

    def on_postgres(sql: str, variables: dict[str, str] | None = None) -> list[dict[str, Any]]:
        with engine.connect() as connection:
            expanded = expand(sql, traffic["since"], traffic["until"], "1h", variables)
            return [dict(row) for row in connection.execute(text(expanded)).mappings()]

    try:
        pg = {q.key: q.sql for q in annotation_queries()}
        for query in annotation_queries(GRAFANA_CLICKHOUSE):
            got = [(float(r["time"]), r["text"]) for r in clickhouse(traffic, query.sql)]
            want = [(float(r["time"]), r["text"]) for r in on_postgres(pg[query.key])]
            assert got == want and got, query.key
        (breach,) = on_postgres(pg["guard_breaches"])
        assert breach["text"].endswith("-research-loop")
        loop = {CONVERSATION_VAR: breach["text"].split(": ", 1)[1]}
        pg_panels = {q.key: q.sql for q in sql_queries()}
        for query in sql_queries(GRAFANA_CLICKHOUSE):
            if query.key.startswith("conversation_"):
                got = clickhouse(traffic, query.sql, variables=loop)
                want = on_postgres(pg_panels[query.key], loop)
                assert len(got) == len(want) == 6, query.key  # the loop's six calls
                for row, expected in zip(got, want, strict=True):
                    assert {k: _plain(v) for k, v in row.items() if k != "time"} == {
                        k: _plain(v) for k, v in expected.items() if k != "time"
                    }
    finally:
        engine.dispose()


def _plain(value: Any) -> Any:
    """A number as an exact Decimal (ClickHouse and PostgreSQL print money at different places)."""
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return D(str(value))
    return value
