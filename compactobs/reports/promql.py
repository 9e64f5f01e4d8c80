"""The Prometheus dashboard's PromQL, over compactobs' metrics as OpenTelemetry's Prometheus exporter names
them: dots become underscores, the unit is appended (`s` as `seconds`; annotations such as `{token}` are
dropped) and counters end in `_total` — `compactobs.cost` (USD) is `compactobs_cost_USD_total`.

Every name comes from compactobs.telemetry; tests/test_dashboards_prometheus.py runs every query against a
real Prometheus scraping an instrumented app and checks each name is in the scrape.

Totals use the dashboard's range (`increase(...[$__range])`); series use `$__interval` buckets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from compactobs import telemetry as t

__all__ = ["PromQuery", "prometheus_label", "prometheus_name", "queries"]

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
    total = f"sum(increase({COST}[$__range]))"
    read = f'increase({TOKENS}{{{TOKEN_CLASS}="cache_read"}}[$__interval])'
    seen = f'increase({TOKENS}{{{TOKEN_CLASS}=~"{SEEN_CLASSES}"}}[$__interval])'
    ok = f'{ERROR_TYPE}=""'
    return [
        PromQuery("spend", "cost_usd", total, "cost_usd"),
        PromQuery(
            "spend", "prev_cost_usd", f"sum(increase({COST}[$__range] offset $__range)) or vector(0)", "prev"
        ),
        PromQuery("compactions", "compactions", f"sum(increase({COMPACTIONS}[$__range]))", "compactions"),
        PromQuery(
            "compactions",
            "compaction_share",
            f'sum(increase({COST}{{{ITERATION_TYPE}="compaction"}}[$__range])) / {total}',
            "share",
        ),
        PromQuery(
            "cost_by_model",
            "cost_by_model",
            f"sum by ({MODEL}) (increase({COST}[$__interval]))",
            f"{{{{{MODEL}}}}}",
            instant=False,
        ),
        PromQuery(
            "tokens_by_class",
            "tokens_by_class",
            f"sum by ({TOKEN_CLASS}) (increase({TOKENS}[$__range]))",
            f"{{{{{TOKEN_CLASS}}}}}",
        ),
        PromQuery(
            "cost_by_iteration_type",
            "cost_by_iteration_type",
            f"sum by ({ITERATION_TYPE}) (increase({COST}[$__range]))",
            f"{{{{{ITERATION_TYPE}}}}}",
        ),
        PromQuery("cache_hit_ratio", "hit_ratio", f"sum({read}) / sum({seen})", "hit ratio", instant=False),
        PromQuery(
            "errors_latency",
            "error_rate",
            f'(sum(increase({DURATION}_count{{{ERROR_TYPE}!=""}}[$__interval])) or vector(0)) '
            f"/ sum(increase({DURATION}_count[$__interval]))",
            "error rate",
            instant=False,
        ),
        PromQuery(
            "errors_latency",
            "latency_p50",
            f"histogram_quantile(0.5, sum by (le) (increase({DURATION}_bucket{{{ok}}}[$__interval])))",
            "p50",
            instant=False,
        ),
        PromQuery(
            "errors_latency",
            "latency_p95",
            f"histogram_quantile(0.95, sum by (le) (increase({DURATION}_bucket{{{ok}}}[$__interval])))",
            "p95",
            instant=False,
        ),
    ]
