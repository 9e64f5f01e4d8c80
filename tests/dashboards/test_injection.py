"""No dashboard variable steers a query (issue 27, item 4): every dashboard's JSON is parsed, every variable
a viewer or a URL can set is given hostile values, substituted as Grafana does (its formats: tests/
grafana_macros.py), and every query runs on the real engine: PostgreSQL, chdb (ClickHouse) and Prometheus.
A hostile value must select what a value matching nothing selects (it is data, never SQL or PromQL), and a
stored value full of quotes, backslashes and `$` macros is selected exactly.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from compactobs.reports.dashboard import CONVERSATION_VAR, MODEL_VAR, SERVICE_VAR, sql_queries, valid_table
from tests.dashboards.test_clickhouse import clickhouse
from tests.dashboards.test_dashboards import SINCE, UNTIL, _store
from tests.grafana_macros import expand, expand_clickhouse, substitute
from tests.prometheus import RANGE, get
from tests.reports.test_cost import call_row, iteration_row, store_rows

generate = pytest.importorskip("dashboards.generate", reason="grafana-foundation-sdk needs Python 3.11")

SELECTION = (SERVICE_VAR, MODEL_VAR, CONVERSATION_VAR)
HOSTILE = (
    "x' OR '1'='1",
    "x\\' OR 1=1 --",
    "'; DROP TABLE calls; --",
    "$__timeFilter(start_time) OR '1'='1",
    "${datasource}",
    '") or vector(1) or ("',
    'x"} or vector(1) or {a="',
    "\\",
    "%27 OR 1=1",
    "line\nbreak\u202e",
    "ü 😀",
)
NOTHING = "no-such-value"
"""A benign value that matches nothing: what every hostile value must select."""
STRANGE = 'o\'brien \\ $__timeFilter(start_time) "x" ü'
"""A service name stored as is, selected exactly."""
_REFERENCE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)|\[\[(\w+)\]\]")


def _boards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(text) for path, text in generate.outputs().items()}


def _queries(board: dict[str, Any]) -> list[str]:
    """Every query text in the dashboard: panels' targets, variables' queries, annotations'."""
    found = [t.get("rawSql") or t.get("expr") or "" for p in board["panels"] for t in p["targets"]]
    for variable in board["templating"]["list"]:
        if isinstance(variable.get("query"), str) and variable["type"] == "query":
            found.append(variable["query"])
    for annotation in board.get("annotations", {}).get("list", []):
        target = annotation.get("target") or {}
        found += [q for q in (annotation.get("expr"), target.get("rawSql")) if q]
    return found


def test_every_variable_a_url_can_set_reaches_a_query_only_percent_encoded_inside_a_literal() -> None:
    for name, board in _boards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert set(variables) == {"datasource", *SELECTION}, name
        assert variables["datasource"]["type"] == "datasource"
        assert variables[CONVERSATION_VAR]["type"] == "textbox"
        for query in _queries(board):
            for match in _REFERENCE.finditer(query):
                variable = match.group(1) or match.group(3) or match.group(4)
                assert variable in SELECTION, (name, match.group(0))
                assert match.group(2) == "percentencode", (name, match.group(0))
                before, after = query[match.start() - 1], query[match.end()]
                assert before == after and before in "'\"", (
                    name,
                    query[match.start() - 20 : match.end() + 5],
                )


def test_the_clickhouse_table_is_an_identifier_or_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert valid_table("logs.my_traces") == "logs.my_traces"
    for name in ("otel_traces; DROP TABLE x", "a.b.c", "t WHERE 1", "`t`", "${spans_table}", ""):
        with pytest.raises(ValueError, match="not a table name"):
            valid_table(name)
        with pytest.raises(SystemExit) as exit_info:
            generate.main(["--check", "--spans-table", name])
        assert exit_info.value.code == 2 and "not a table name" in capsys.readouterr().err


@pytest.fixture(scope="module")
def store_url(module_postgres_url: str) -> str:
    calls, iterations = _store()
    calls.append(call_row("strange", "2025-03-11T08:00:00", service_name=STRANGE, cost_usd=1))
    iterations.append(iteration_row("strange", 0, "2025-03-11T08:00:00", cost_usd=1))
    store_rows(module_postgres_url, calls, iterations)
    return module_postgres_url


def _postgres(url: str, variables: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {
                q.key: [
                    dict(r)
                    for r in connection.execute(text(expand(q.sql, SINCE, UNTIL, "1h", variables))).mappings()
                ]
                for q in sql_queries()
            }
    finally:
        engine.dispose()


def test_hostile_values_on_postgresql(store_url: str) -> None:
    for variable in SELECTION:
        nothing = _postgres(store_url, {variable: NOTHING})
        for value in HOSTILE:
            assert _postgres(store_url, {variable: value}) == nothing, (variable, value)
    # A value made of everything a query could trip on is still just a value: the call stored with it.
    (spend,) = _postgres(store_url, {SERVICE_VAR: STRANGE})["spend"]
    assert spend["cost_usd"] == 1
    # By hand (tests/dashboards/test_dashboards.py's store): service worker holds C (0.009) and D (unpriced).
    (worker,) = _postgres(store_url, {SERVICE_VAR: "worker"})["spend"]
    assert worker["cost_usd"] == Decimal("0.009")


def test_hostile_values_on_clickhouse(traffic: dict[str, Any]) -> None:
    """Each hostile value runs on every panel once, set in one of the three variables, the variable turning
    with the panel: every value reaches every panel and every variable, in 11 runs a panel instead of 33
    (chdb's queries are the suite's slowest)."""
    board = _boards()[generate.CLICKHOUSE_FILE.name]
    queries = [p["targets"][0]["rawSql"] for p in board["panels"]]
    nothing = {
        (variable, index): clickhouse(traffic, query, variables={variable: NOTHING})
        for variable in SELECTION
        for index, query in enumerate(queries)
    }
    reached: set[tuple[str, str]] = set()
    for index, query in enumerate(queries):
        for turn, value in enumerate(HOSTILE):
            variable = SELECTION[(index + turn) % len(SELECTION)]
            got = clickhouse(traffic, query, variables={variable: value})
            assert got == nothing[variable, index], (variable, value, index)
            reached |= {(value, f"panel {index}"), (value, variable)}
    # The rotation's coverage: every (value, panel) and every (value, variable) pair ran at least once.
    assert len(queries) >= len(SELECTION)
    panels = {f"panel {index}" for index in range(len(queries))}
    assert reached == {(value, where) for value in HOSTILE for where in (*panels, *SELECTION)}
    # The same expansion, checked to reach ClickHouse's parser as one string literal per use.
    sql = expand_clickhouse(queries[0], SINCE, UNTIL, "1h", {SERVICE_VAR: HOSTILE[1]})
    assert "decodeURLComponent('x%5C%27%20OR%201%3D1%20--')" in sql


def test_hostile_values_on_prometheus(scraped: dict[str, Any]) -> None:
    board = _boards()[generate.PROMETHEUS_FILE.name]
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]

    def run(variables: dict[str, str]) -> list[Any]:
        results = []
        for expr in exprs:
            query = expr.replace("$__rate_interval", RANGE).replace("$__range", RANGE)
            results.append(scraped["prometheus"].instant(substitute(query, variables), scraped["at"]))
        return results

    for variable in (SERVICE_VAR, MODEL_VAR):
        nothing = run({variable: NOTHING})
        for value in HOSTILE:
            assert run({variable: value}) == nothing, (variable, value)


# -- the variables' own queries, on the same engines -----------------------------------------------------


def _choice_queries(board_file: str) -> dict[str, str]:
    board = _boards()[board_file]
    return {v["name"]: v["query"] for v in board["templating"]["list"] if v["type"] == "query"}


def test_the_variables_list_what_postgresql_holds(store_url: str) -> None:
    listed = {}
    engine = create_engine(store_url)
    try:
        with engine.connect() as connection:
            for name, sql in _choice_queries(generate.POSTGRES_FILE.name).items():
                rows = connection.execute(text(expand(sql, SINCE, UNTIL))).scalars()
                listed[name] = set(rows)
    finally:
        engine.dispose()
    # tests/dashboards/test_dashboards.py's store in the range (P, before it, is haiku too), and the strange
    # service.
    assert listed == {
        SERVICE_VAR: {"api", "worker", STRANGE},
        MODEL_VAR: {"claude-sonnet-4-5", "claude-haiku-4-5", "mystery-1"},
    }


def test_the_variables_list_what_clickhouse_holds(traffic: dict[str, Any]) -> None:
    listed = {
        name: {row["value"] for row in clickhouse(traffic, sql)}
        for name, sql in _choice_queries(generate.CLICKHOUSE_FILE.name).items()
    }
    assert listed[SERVICE_VAR] == {"compactobs-demo"}
    assert {"claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5", "claude-preview-2027"} <= listed[
        MODEL_VAR
    ]


def test_the_variables_list_what_prometheus_holds(scraped: dict[str, Any]) -> None:
    """Grafana's `label_values(metric, label)` is Prometheus' label values API matched on the metric."""
    listed = {}
    for name, query in _choice_queries(generate.PROMETHEUS_FILE.name).items():
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", query).groups()  # type: ignore[union-attr]
        url = f"{scraped['prometheus'].url}/api/v1/label/{label}/values?match[]={metric}"
        listed[name] = set(json.loads(get(url))["data"])
    assert listed == {SERVICE_VAR: {"app", "short"}, MODEL_VAR: {"claude-opus-4-8", "claude-sonnet-4-5"}}
