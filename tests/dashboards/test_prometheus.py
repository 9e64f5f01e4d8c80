"""Every PromQL query of the Prometheus dashboard, run by a real Prometheus (Debian's `prometheus`)
scraping an app instrumented with compactobs (tests/prometheus_app.py: the real SDK against the simulator,
metrics through OpenTelemetry's Prometheus exporter, calls into an SQLite store), against
`compactobs report ... --format json` over the same store.

How exact: the queries' totals are `increase(...[$__range])`, evaluated (instant queries) at the last scrape
with a range that starts before any series existed. Prometheus then extrapolates each counter back only to
where it would have been 0 (its first sample is the tiny warm-up, far below one scrape interval's worth), so
an increase is the counter's whole value: figures equal the store's to float precision (1e-9 relative).
Latency percentiles come from histogram buckets: they must fall in the bucket holding the report's exact
percentile. The queries run with $service set to the app's scrape job.

A short job (tests/prometheus_app.py `short`) is scraped for the first time after its last call: every
series' first sample is its whole value, which `increase()` never counts. The spend panel counts it.
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from compactobs.reports import promql
from compactobs.reports.dashboard import SERVICE_VAR
from tests.cli import run
from tests.grafana_macros import substitute
from tests.prometheus import PROMETHEUS, RANGE, get

if PROMETHEUS is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("prometheus is not installed: .ci/run installs Debian's package")
    pytest.skip("Debian's prometheus package is not installed", allow_module_level=True)
# `scraped`, the app's traffic scraped to the end, is a session fixture (tests/dashboards/conftest.py):
# built once per worker, shared with tests/dashboards/test_injection.py.


def evaluate(
    scraped: dict[str, Any], query: promql.PromQuery, job: str = "app", expr: str | None = None
) -> list[dict[str, Any]]:
    """The query as Grafana would send it for the range `RANGE` with $service the scrape `job`, at that
    job's last scrape; a series query evaluated as one point (its interval the whole range)."""
    text = (expr or query.expr).replace("$__rate_interval", RANGE).replace("$__range", RANGE)
    text = substitute(text.replace("$__interval", RANGE), {SERVICE_VAR: job})
    at = scraped["at"] if job == "app" else scraped["short_at"]
    result: list[dict[str, Any]] = scraped["prometheus"].instant(text, at)
    return result


def report(scraped: dict[str, Any], name: str, *args: str, db: str | None = None) -> dict[str, Any]:
    since = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    code, out, err = run(
        "--db", db or scraped["db"], "report", name, "--since", since, *args, "--format", "json"
    )  # fmt: skip
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def by_key(scraped: dict[str, Any], key: str) -> list[dict[str, Any]]:
    (query,) = [q for q in promql.queries() if q.key == key]
    return evaluate(scraped, query)


def value(result: list[dict[str, Any]]) -> float:
    (sample,) = result
    return float(sample["value"][1])


def same(a: float, b: Any) -> bool:
    """Equal to float precision, or to the report JSON's 6 decimal places."""
    return math.isclose(a, float(b), rel_tol=1e-9, abs_tol=5e-7)


def test_every_query_returns_data_and_reads_scraped_names(scraped: dict[str, Any]) -> None:
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in get(scraped["metrics"]).splitlines()
        if line and not line.startswith("#")
    }
    for query in promql.queries():
        names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?=[{\[])", query.expr))
        assert names and names <= exposed, (query.key, names - exposed)
        result = evaluate(scraped, query)
        assert result, f"{query.key}: no data"
        assert all(not math.isnan(float(r["value"][1])) for r in result), query.key


def test_spend_and_compactions_equal_the_cost_report(scraped: dict[str, Any]) -> None:
    totals = report(scraped, "cost", "--by", "model")["totals"]
    assert totals["cost_usd"] > 0 and totals["compactions"] == 42  # (1 warm-up + 20) per model
    assert same(value(by_key(scraped, "cost_usd")), totals["cost_usd"])
    assert value(by_key(scraped, "prev_cost_usd")) == 0  # nothing before the range
    assert same(value(by_key(scraped, "compactions")), totals["compactions"])
    assert same(value(by_key(scraped, "compaction_share")), totals["compaction_share"])


def test_cost_by_model_and_iteration_type(scraped: dict[str, Any]) -> None:
    models = {r["model"]: r["cost_usd"] for r in report(scraped, "cost", "--by", "model")["rows"]}
    # USD per hour over the whole range: x RANGE's 10 minutes / 60 is the range's spend.
    rates = {r["metric"][promql.MODEL]: float(r["value"][1]) for r in by_key(scraped, "cost_by_model")}
    got = {model: rate * 10 / 60 for model, rate in rates.items()}
    assert got.keys() == models.keys() and all(same(got[m], models[m]) for m in got)
    rows = report(scraped, "cost", "--by", "iteration-type")["rows"]
    kinds = {r["iteration_type"]: r["cost_usd"] for r in rows}
    result = by_key(scraped, "cost_by_iteration_type")
    got = {r["metric"][promql.ITERATION_TYPE]: float(r["value"][1]) for r in result}
    assert got.keys() == {k for k, v in kinds.items() if v} and all(same(got[k], kinds[k]) for k in got)


def test_tokens_by_class_and_hit_ratio(scraped: dict[str, Any]) -> None:
    totals = report(scraped, "cost")["totals"]
    got = {r["metric"][promql.TOKEN_CLASS]: float(r["value"][1]) for r in by_key(scraped, "tokens_by_class")}
    expected = {
        "input": totals["input_tokens"],
        "output": totals["output_tokens"],
        "cache_read": totals["cache_read_input_tokens"],
        "cache_write_5m": totals["cache_creation_5m_input_tokens"],
    }
    assert got.keys() == expected.keys() and all(same(got[k], expected[k]) for k in got), (got, expected)
    # By hand: per model, (1 warm-up + 20 x 1,000) x (20 + 90) uncached input tokens.
    assert expected["input"] == 2 * (1 + 20 * 1000) * (20 + 90)
    cache = report(scraped, "cache")["totals"]
    # Every call reads 300 k of the (20 + 90) k + 300 k + 40 k input tokens it sees: 300 / 450.
    assert same(value(by_key(scraped, "hit_ratio")), cache["hit_ratio"])
    assert same(value(by_key(scraped, "hit_ratio")), 300 / 450)


def test_error_rate_and_latency(scraped: dict[str, Any]) -> None:
    ops = report(scraped, "ops")["totals"]
    assert same(value(by_key(scraped, "error_rate")), ops["error_rate"])
    assert same(value(by_key(scraped, "error_rate")), 0.5)  # one failed call beside each good one
    bounds = [0.0] + [0.01 * 2**n for n in range(14)]  # gen_ai.client.operation.duration's buckets
    for p in ("p50", "p95"):
        exact = ops[f"latency_{p}_ms"] / 1000
        estimated = value(by_key(scraped, f"latency_{p}"))
        bucket = next(i for i, upper in enumerate(bounds) if exact <= upper)
        assert bounds[max(bucket - 1, 0)] <= estimated <= bounds[bucket], (p, exact, estimated)


def test_a_short_jobs_spend_counts_its_first_sample(scraped: dict[str, Any]) -> None:
    """The short job's every series was first scraped holding its final value: the spend panel equals
    `report cost` over its store, and so do compactions; `increase()` alone says 0 (no sample after the
    first one changed). By hand, per model one call of 1,000 x the warm-up's usage."""
    totals = report(scraped, "cost", "--by", "model", db=scraped["short_db"])["totals"]
    assert totals["calls"] == 2 and totals["compactions"] == 2 and totals["cost_usd"] > 0
    (spend,) = [q for q in promql.queries() if q.key == "cost_usd"]
    assert same(value(evaluate(scraped, spend, job="short")), totals["cost_usd"])
    (compactions,) = [q for q in promql.queries() if q.key == "compactions"]
    assert same(value(evaluate(scraped, compactions, job="short")), 2)
    plain = f'sum(increase({promql.COST}{{job="short"}}[{RANGE}]))'
    assert value(evaluate(scraped, spend, job="short", expr=plain)) == 0
    # The app's spend is not in the short job's, nor the other way round.
    assert not same(value(evaluate(scraped, spend)), totals["cost_usd"])
