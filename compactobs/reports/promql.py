"""The Prometheus dashboard's PromQL, over compactobs' metrics as OpenTelemetry's Prometheus exporter names
them: dots become underscores, the unit is appended (`s` as `seconds`; annotations such as `{token}` are
dropped) and counters end in `_total` — `compactobs.cost` (USD) is `compactobs_cost_USD_total`.

Every name comes from compactobs.semconv; tests/dashboards/test_prometheus.py runs every query against a
real Prometheus scraping an instrumented app and checks each name is in the scrape.

Totals over the dashboard's range count every series' first sample: `increase()` leaves out what a
counter held when first scraped (a short job, a new model's first call), so a series born inside the
range counts its whole value (`max_over_time`), and only a series that existed before it counts its
`increase`. Series use `$__rate_interval` (at least four scrapes, whatever the step).

Selection: $service (the scrape `job`) and $model, as the SQL dashboards' (`dashboard.variable_text`:
percent-encoded by Grafana, so no value can end a PromQL string); each series is kept when its label equals
the value (joined against a one-series vector carrying it), or always for All or an empty value. A label
value outside `A-Za-z0-9-_.~` does not survive percent-encoding: such a model or job cannot be selected
(the panels then show nothing, never another's figures).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from compactobs import semconv as t
from compactobs.reports.dashboard import MODEL_VAR, SERVICE_VAR, variable_text

__all__ = [
    "PromQuery",
    "choice_queries",
    "prometheus_label",
    "prometheus_name",
    "queries",
    "selected",
    "total",
]

_UNITS: Final = {
    t.METRIC_COST: "USD",
    t.METRIC_TOKENS: "{token}",
    t.METRIC_COMPACTIONS: "{compaction}",
    t.METRIC_TOKEN_USAGE: "{token}",
    t.METRIC_OPERATION_DURATION: "s",
}
_COUNTERS: Final = frozenset({t.METRIC_COST, t.METRIC_TOKENS, t.METRIC_COMPACTIONS})
_UNIT_WORDS: Final = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "ratio"}


def prometheus_label(attribute: str) -> str:
    """An OpenTelemetry attribute's Prometheus label name."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", attribute)


def prometheus_name(metric: str) -> str:
    """A compactobs metric's Prometheus name: the series a counter is scraped as, or a histogram's base name
    (its series add `_bucket`, `_sum`, `_count`)."""
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", metric)
    unit = _UNITS[metric]
    if not unit.startswith("{"):
        name += "_" + _UNIT_WORDS.get(unit, unit)
    return name + "_total" if metric in _COUNTERS else name


COST: Final = prometheus_name(t.METRIC_COST)
TOKENS: Final = prometheus_name(t.METRIC_TOKENS)
COMPACTIONS: Final = prometheus_name(t.METRIC_COMPACTIONS)
DURATION: Final = prometheus_name(t.METRIC_OPERATION_DURATION)

MODEL: Final = prometheus_label(t.RESPONSE_MODEL)
ITERATION_TYPE: Final = prometheus_label(t.ITERATION_TYPE)
TOKEN_CLASS: Final = prometheus_label(t.DIM_TOKEN_CLASS)
ERROR_TYPE: Final = prometheus_label(t.ERROR_TYPE)
TOKEN_TYPE: Final = prometheus_label(t.TOKEN_TYPE)
SEEN_CLASSES: Final = "input|cache_read|cache_write_5m|cache_write_1h"
"""The token classes a hit ratio divides by (every input token: uncached, read, written)."""


SERVICE_LABEL: Final = "job"
"""Where a scraped series says its service: Prometheus' scrape job (resource attributes such as service.name
go to `target_info`, not onto each series)."""
_ENCODED_ALL: Final = "%2A"
"""ALL_VALUE as `:percentencode` gives it."""


def _carrying(label: str, value: str) -> str:
    """A one-series vector with `label` set to `value` (none when the value is empty)."""
    return f'label_replace(vector(1), "{label}", "{value}", "", "")'


def _one_of(label: str, variable: str) -> tuple[str, str]:
    """The two ways a series is kept: (its `label` is the variable's value, the variable is All or empty)."""
    value = variable_text(variable)
    every = f"({_carrying('v', value)} and on(v) ({_carrying('v', _ENCODED_ALL)} or vector(1)))"
    return f"and on({label}) {_carrying(label, value)}", f"and on() {every}"


def selected(expr: str) -> str:
    """`expr` (an instant vector keeping its labels) narrowed to the dashboard's $service and $model."""
    for label, variable in ((SERVICE_LABEL, SERVICE_VAR), (MODEL, MODEL_VAR)):
        equal, every = _one_of(label, variable)
        expr = f"(({expr}) {equal} or ({expr}) {every})"
    return expr


def total(selector: str, window: str = "$__range") -> str:
    """Per series, what the counter `selector` added over the window, its first sample included: the
    increase of a series that existed before the window, the whole value of one born inside it."""
    before = f"{selector} offset {window}"
    existing = f"increase({selector}[{window}]) and {before}"
    return f"({existing} or max_over_time({selector}[{window}]) unless {before})"


def choice_queries() -> list[tuple[str, str]]:
    """(variable, the label_values query listing its values) for $service and $model."""
    return [
        (SERVICE_VAR, f"label_values({COST}, {SERVICE_LABEL})"),
        (MODEL_VAR, f"label_values({COST}, {MODEL})"),
    ]


@dataclass(frozen=True)
class PromQuery:
    panel: str
    key: str
    expr: str
    legend: str = "__auto"
    instant: bool = True
    """A total over the range (instant), or a series over time (range)."""


def queries() -> list[PromQuery]:
    """Every PromQL query, by panel, in the dashboard's order."""
    total_cost = f"sum({selected(total(COST))})"
    compaction_cost = COST + "{" + ITERATION_TYPE + '="compaction"}'
    read = f'increase({TOKENS}{{{TOKEN_CLASS}="cache_read"}}[$__rate_interval])'
    seen = f'increase({TOKENS}{{{TOKEN_CLASS}=~"{SEEN_CLASSES}"}}[$__rate_interval])'
    ok = f'{ERROR_TYPE}=""'
    failed = f'{DURATION}_count{{{ERROR_TYPE}!=""}}'

    def quantile(q: float) -> str:
        buckets = selected(f"increase({DURATION}_bucket{{{ok}}}[$__rate_interval])")
        return f"histogram_quantile({q}, sum by (le) ({buckets}))"

    return [
        PromQuery("spend", "cost_usd", total_cost, "cost_usd"),
        PromQuery(
            "spend",
            "prev_cost_usd",
            f"sum({selected(f'increase({COST}[$__range] offset $__range)')}) or vector(0)",
            "prev",
        ),
        PromQuery("compactions", "compactions", f"sum({selected(total(COMPACTIONS))})", "compactions"),
        PromQuery(
            "compactions",
            "compaction_share",
            f"sum({selected(total(compaction_cost))}) / {total_cost}",
            "share",
        ),
        PromQuery(
            "cost_by_model",
            "cost_by_model",
            f"sum by ({MODEL}) ({selected(f'rate({COST}[$__rate_interval])')}) * 3600",
            f"{{{{{MODEL}}}}}",
            instant=False,
        ),
        PromQuery(
            "tokens_by_class",
            "tokens_by_class",
            f"sum by ({TOKEN_CLASS}) ({selected(total(TOKENS))})",
            f"{{{{{TOKEN_CLASS}}}}}",
        ),
        PromQuery(
            "cost_by_iteration_type",
            "cost_by_iteration_type",
            f"sum by ({ITERATION_TYPE}) ({selected(total(COST))})",
            f"{{{{{ITERATION_TYPE}}}}}",
        ),
        PromQuery(
            "cache_hit_ratio",
            "hit_ratio",
            f"sum({selected(read)}) / sum({selected(seen)})",
            "hit ratio",
            instant=False,
        ),
        PromQuery(
            "errors_latency",
            "error_rate",
            f"(sum({selected(f'increase({failed}[$__rate_interval])')}) or vector(0)) "
            f"/ sum({selected(f'increase({DURATION}_count[$__rate_interval])')})",
            "error rate",
            instant=False,
        ),
        PromQuery("errors_latency", "latency_p50", quantile(0.5), "p50", instant=False),
        PromQuery("errors_latency", "latency_p95", quantile(0.95), "p95", instant=False),
    ]
