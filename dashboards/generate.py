"""Generate the Grafana dashboards in this folder from code, with grafana-foundation-sdk.

    python -m dashboards.generate           # rewrite dashboards/*.json
    python -m dashboards.generate --check   # exit 1 when a committed file differs from what this makes
    python -m dashboards.generate --spans-table logs.my_traces   # the ClickHouse one for another table

The SQL comes from `compactobs.reports.dashboard` (the reports' own measures, compiled with Grafana's
PostgreSQL macros, or with the ClickHouse data source's over the Collector's spans table); the PromQL from
`compactobs.reports.promql` (names derived from compactobs.semconv). Every dashboard takes its data source
from a variable (`${datasource}`): no uid is written anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from grafana_foundation_sdk.builders import bargauge, dashboard, stat, table, timeseries
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard as model

from compactobs.reports import dashboard as sql
from compactobs.reports import promql
from compactobs.reports.dashboard import GRAFANA_POSTGRES, PanelQuery, sql_queries

HERE: Final = Path(__file__).resolve().parent
POSTGRES_FILE: Final = HERE / "compactobs-postgres.json"
PROMETHEUS_FILE: Final = HERE / "compactobs-prometheus.json"
CLICKHOUSE_FILE: Final = HERE / "compactobs-clickhouse.json"
POSTGRES_TYPE: Final = "grafana-postgresql-datasource"
CLICKHOUSE_TYPE: Final = "grafana-clickhouse-datasource"
PROMETHEUS_TYPE: Final = "prometheus"
DATASOURCE_VAR: Final = "datasource"

USD: Final = "currencyUSD"
PERCENT: Final = "percentunit"
SECONDS: Final = "s"
COUNT: Final = "short"


# -- a PostgreSQL query, which the SDK has no builder for ---------------------------------------------------


class SqlQuery(cogvariants.Dataquery):
    """A Grafana SQL data source query (raw SQL, code editor)."""

    def __init__(
        self,
        raw_sql: str = "",
        format_val: str = "table",
        ref_id: str = "A",
        datasource: model.DataSourceRef | None = None,
    ) -> None:
        self.raw_sql = raw_sql
        self.format_val = format_val
        self.ref_id = ref_id
        self.datasource = datasource

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "editorMode": "code",
            "format": self.format_val,
            "rawQuery": True,
            "rawSql": self.raw_sql,
        }
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SqlQuery:
        ref = data.get("datasource")
        return cls(
            raw_sql=data.get("rawSql", ""),
            format_val=data.get("format", "table"),
            ref_id=data.get("refId", "A"),
            datasource=model.DataSourceRef.from_json(ref) if ref is not None else None,
        )


class ClickHouseQuery(SqlQuery):
    """A grafana-clickhouse-datasource query (SQL editor): its `format` is the plugin's number (1 table,
    0 time series) and its `queryType` the matching name."""

    _FORMATS: Final = {"table": (1, "table"), "time_series": (0, "timeseries")}

    def to_json(self) -> dict[str, object]:
        number, query_type = self._FORMATS[self.format_val]
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "editorType": "sql",
            "format": number,
            "queryType": query_type,
            "rawSql": self.raw_sql,
        }
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClickHouseQuery:
        ref = data.get("datasource")
        by_number = {number: name for name, (number, _) in cls._FORMATS.items()}
        return cls(
            raw_sql=data.get("rawSql", ""),
            format_val=by_number.get(data.get("format", 1), "table"),
            ref_id=data.get("refId", "A"),
            datasource=model.DataSourceRef.from_json(ref) if ref is not None else None,
        )


class Sql(cogbuilder.Builder[SqlQuery]):
    def __init__(self, raw_sql: str, format_val: str, kind: str, ref_id: str = "A") -> None:
        query = ClickHouseQuery if kind == CLICKHOUSE_TYPE else SqlQuery
        self._internal = query(raw_sql, format_val, ref_id, _datasource(kind))

    def build(self) -> SqlQuery:
        return self._internal


def register_sql_query() -> None:
    """Let the SDK read our SQL queries back into SqlQuery (a round trip through its types)."""
    register_default_plugins()
    cogruntime.register_dataquery_variant(cogruntime.DataqueryConfig(POSTGRES_TYPE, SqlQuery.from_json))
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(CLICKHOUSE_TYPE, ClickHouseQuery.from_json)
    )


def _datasource(kind: str) -> model.DataSourceRef:
    return model.DataSourceRef(type_val=kind, uid="${" + DATASOURCE_VAR + "}")


# -- layout ------------------------------------------------------------------------------------------------


@dataclass
class Grid:
    """Places panels left to right, wrapping at Grafana's 24 columns: no two overlap."""

    x: int = 0
    y: int = 0
    row_height: int = 0

    def place(self, w: int, h: int) -> model.GridPos:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = model.GridPos(h=h, w=w, x=self.x, y=self.y)
        self.x += w
        self.row_height = max(self.row_height, h)
        return pos


@dataclass(frozen=True)
class PanelSpec:
    kind: str
    """stat, timeseries, table or bargauge"""
    title: str
    formula: str
    """What the panel computes, said in its description."""
    unit: str
    w: int
    h: int


def _panel(spec: PanelSpec, panel_id: int, grid: Grid, targets: Sequence[Any], kind: str) -> Any:
    builders = {"stat": stat, "timeseries": timeseries, "table": table, "bargauge": bargauge}
    panel: Any = builders[spec.kind].Panel()
    panel = (
        panel.id(panel_id)
        .title(spec.title)
        .description(spec.formula)
        .datasource(_datasource(kind))
        .unit(spec.unit)
        .grid_pos(grid.place(spec.w, spec.h))
        .targets(list(targets))
    )
    if spec.kind == "stat":
        panel = panel.decimals(4 if spec.unit == USD else 2)
    return panel


def _dashboard(
    title: str, uid: str, kind: str, description: str, choices: Sequence[tuple[str, str]]
) -> dashboard.Dashboard:
    """A dashboard with its data source variable and the selection variables ($service, $model: `choices`,
    the query listing each one's values; $conversation: a text box, set by the conversation links)."""
    variable = (
        dashboard.DatasourceVariable(DATASOURCE_VAR)
        .label("Data source")
        .type(kind)
        .description(f"The {kind} data source holding compactobs' data")
    )
    board = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["compactobs", "claude", "cost"])
        .time("now-24h", "now")
        .refresh("1m")
        .timezone("utc")
        .editable()
        .with_variable(variable)
    )
    for name, query in choices:
        board = board.with_variable(
            dashboard.QueryVariable(name)
            .label(name.capitalize())
            .description(_CHOICE_HELP[name])
            .datasource(_datasource(kind))
            .query(query)
            .include_all(True)
            .all_value(sql.ALL_VALUE)
            .multi(False)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
        )
    conversation = (
        dashboard.TextBoxVariable(sql.CONVERSATION_VAR)
        .label("Conversation")
        .default_value("")
        .description(_CHOICE_HELP[sql.CONVERSATION_VAR])
    )
    return board.with_variable(conversation)


_CHOICE_HELP: Final[dict[str, str]] = {
    sql.SERVICE_VAR: "The service (service.name) whose calls to show; All: every one",
    sql.MODEL_VAR: "The model whose calls to show (requested or answering, as report --model); All: all",
    sql.CONVERSATION_VAR: "A conversation id (empty: every one); the conversation tables link here",
}


# -- PostgreSQL ---------------------------------------------------------------------------------------------

RANGE_NOTE: Final = (
    " Over the dashboard's time range (start <= call start < end), from raw rows: always current."
)

POSTGRES_PANELS: Final[dict[str, PanelSpec]] = {
    "spend": PanelSpec(
        "stat",
        "Spend in range, and against the previous range",
        "cost_usd = sum of calls.cost_usd over priced calls (the billed sum over every iteration); "
        "prev_cost_usd = the same over the range of equal length just before; delta_cost_pct = "
        "(cost_usd - prev_cost_usd) / prev_cost_usd." + RANGE_NOTE,
        USD,
        12,
        5,
    ),
    "compactions": PanelSpec(
        "stat",
        "Compactions and their cost share",
        "compactions = sum of calls.compactions_count; compaction_cost_usd = sum of the compaction "
        "iterations' cost (priced calls); compaction_share = compaction_cost_usd / cost_usd." + RANGE_NOTE,
        USD,
        12,
        5,
    ),
    "cost_by_model": PanelSpec(
        "timeseries",
        "Cost over time by model",
        "Per $__interval bucket and model: each iteration's cost at its own model (iterations.cost_usd; "
        "a call's server-tool cost on its last iteration), priced calls only — report cost --by model.",
        USD,
        16,
        8,
    ),
    "cost_by_token_class": PanelSpec(
        "bargauge",
        "Cost by token class",
        "Sum per class of the priced calls' cost: uncached input, output, cache read, cache write 5m, "
        "cache write 1h, server tools (web search)." + RANGE_NOTE,
        USD,
        8,
        8,
    ),
    "top_level_vs_bill": PanelSpec(
        "table",
        "What the top-level usage showed, against the bill",
        "top_level_* = sum of the responses' top-level usage (it leaves compaction iterations out); "
        "input_tokens/output_tokens = the billed sums over every iteration; left_out_share = (billed - "
        "top-level) / billed, input + output tokens." + RANGE_NOTE,
        COUNT,
        12,
        5,
    ),
    "cache_over_time": PanelSpec(
        "timeseries",
        "Cache hit ratio and net savings over time",
        "hit_ratio = cache read / (uncached input + cache write 5m + cache write 1h + cache read), "
        "token-weighted; net_usd = reads at each iteration's uncached input rate - their cost - the write "
        "premium — report cache, per $__interval bucket.",
        USD,
        12,
        8,
    ),
    "top_conversations": PanelSpec(
        "table",
        f"Top {10} conversations by cost",
        "Per conversation: calls, error calls, compactions, sum of cost_usd, the compaction iterations' "
        "cost; priced calls, the 10 costliest." + RANGE_NOTE,
        USD,
        12,
        8,
    ),
    "error_bursts": PanelSpec(
        "table",
        "Anomalies: error bursts",
        "report anomalies' error_burst rule: UTC clock hours with >= 20 calls of which more than 10% "
        "failed with HTTP 429, 529 or another 5xx; share = error_calls / calls." + RANGE_NOTE,
        COUNT,
        12,
        6,
    ),
    "unpriced_models": PanelSpec(
        "table",
        "Anomalies: unpriced models",
        "report anomalies' unpriced_model rule: models compactobs has no price for (cost NULL, never "
        "$0): their calls, iterations, conversations and tokens." + RANGE_NOTE,
        COUNT,
        12,
        6,
    ),
    "errors_latency": PanelSpec(
        "timeseries",
        "Error rate and latency",
        "error_rate = calls that ended in an error / calls; latency_p50/p95/p99 = percentile_cont of the "
        "duration of successful calls (retries included), seconds — report ops, per $__interval bucket.",
        SECONDS,
        24,
        8,
    ),
    "conversation_calls": PanelSpec(
        "table",
        "Conversation $conversation: its calls",
        "The conversation chosen in $conversation (a top-conversations row links here), call by call as "
        "report conversation lists them: model, stop reason, compactions, the context it left against the "
        f"compaction trigger, cost (empty when unpriced); the first {sql.CONVERSATION_CALLS} in the range.",
        COUNT,
        24,
        8,
    ),
    "conversation_context": PanelSpec(
        "timeseries",
        "Conversation $conversation: context against the compaction trigger",
        "Per call: context_tokens (what the call left: total input of its last message iteration) and "
        "trigger_tokens (the compaction trigger it asked for); compacted_at marks the calls that compacted. "
        "Guard breaches and compactions are annotations.",
        COUNT,
        24,
        8,
    ),
}

# Each panel's fields whose unit differs from the panel's.
_OVERRIDES: Final[dict[str, dict[str, str]]] = {
    "spend": {"delta_cost_pct": PERCENT},
    "compactions": {"compactions": COUNT, "compaction_share": PERCENT},
    "cache_over_time": {"hit_ratio": PERCENT},
    "top_conversations": {"calls": COUNT, "error_calls": COUNT, "compactions": COUNT},
    "error_bursts": {"hour_start": "dateTimeAsIso", "share": PERCENT},
    "top_level_vs_bill": {"left_out_share": PERCENT},
    "errors_latency": {"error_rate": PERCENT},
    "conversation_calls": {"time": "dateTimeAsIso", "cost_usd": USD},
}
CONVERSATION_LINK: Final = (
    "/d/${__dashboard.uid}?var-conversation=${__value.raw:percentencode}&${__url_time_range}"
    "&${datasource:queryparam}"
)
"""A conversation id links to the conversation panels of the same dashboard (the id percent-encoded)."""


def _with_overrides(panel: Any, key: str) -> Any:
    for field, unit in _OVERRIDES.get(key, {}).items():
        panel = panel.override_by_name(field, [model.DynamicConfigValue(id_val="unit", value=unit)])
    if key == "top_conversations":
        link = {"title": "Open conversation ${__value.raw}", "url": CONVERSATION_LINK}
        panel = panel.override_by_name(
            "conversation_id", [model.DynamicConfigValue(id_val="links", value=[link])]
        )
    if key == "conversation_context":
        points = {"drawStyle": "points", "pointSize": 10}
        panel = panel.override_by_name(
            "compacted_at",
            [model.DynamicConfigValue(id_val="custom." + k, value=v) for k, v in points.items()],
        )
    return panel


def _sql_annotations(kind: str, queries: Sequence[PanelQuery]) -> list[dict[str, Any]]:
    """Grafana annotations from SQL (`time`, `text` columns). Added to the JSON after the SDK's round trip:
    its AnnotationTarget type has no field for a SQL data source's query."""
    colours = {"compactions": "blue", "guard_breaches": "red"}
    names = {"compactions": "Compactions", "guard_breaches": "Guard breaches (stored budgets)"}
    target_type = ClickHouseQuery if kind == CLICKHOUSE_TYPE else SqlQuery
    return [
        {
            "name": names[q.key],
            "datasource": {"type": kind, "uid": "${" + DATASOURCE_VAR + "}"},
            "enable": True,
            "iconColor": colours[q.key],
            "target": target_type(q.sql, "table", "Anno").to_json(),
        }
        for q in queries
    ]


def sql_dashboard(
    title: str,
    uid: str,
    kind: str,
    queries: Sequence[PanelQuery],
    description: str = "compactobs' SQL store: billed cost over every usage.iterations entry, cache and "
    "compaction.",
    choices: Sequence[tuple[str, str]] = (),
    annotations: Sequence[PanelQuery] = (),
) -> dict[str, Any]:
    """A dashboard of POSTGRES_PANELS over the SQL data source `kind`, one query per panel by key: each SQL
    backend is its Dialect's queries and its data source type here."""
    by_key = {q.key: q for q in queries}
    assert set(by_key) == set(POSTGRES_PANELS), "every query has a panel"
    board = _dashboard(title, uid, kind, description, choices)
    grid = Grid()
    for panel_id, (key, spec) in enumerate(POSTGRES_PANELS.items(), start=1):
        query = by_key[key]
        panel = _panel(spec, panel_id, grid, [Sql(query.sql, query.format, kind)], kind)
        board = board.with_panel(_with_overrides(panel, key))
    data = _as_json(board)
    data.setdefault("annotations", {}).setdefault("list", []).extend(_sql_annotations(kind, annotations))
    return data


def postgres_dashboard() -> dict[str, Any]:
    return sql_dashboard(
        "compactobs: cost, cache and compaction (PostgreSQL store)",
        "compactobs-postgres",
        POSTGRES_TYPE,
        sql_queries(GRAFANA_POSTGRES),
        choices=sql.choice_queries(GRAFANA_POSTGRES),
        annotations=sql.annotation_queries(GRAFANA_POSTGRES),
    )


def clickhouse_dashboard(spans_table: str = sql.SPANS_TABLE) -> dict[str, Any]:
    """The same panels over Grafana's ClickHouse data source, reading the Collector's spans table (a
    constant in the SQL: see `compactobs.reports.dashboard.SPANS_TABLE`)."""
    dialect = replace(sql.GRAFANA_CLICKHOUSE, spans_table=sql.valid_table(spans_table))
    return sql_dashboard(
        "compactobs: cost, cache and compaction (ClickHouse, the Collector's spans)",
        "compactobs-clickhouse",
        CLICKHOUSE_TYPE,
        sql_queries(dialect),
        f"compactobs' spans in the OpenTelemetry Collector's ClickHouse exporter table {spans_table}, read "
        "as the SQL store's calls and iterations: billed cost over every usage.iterations entry, cache and "
        "compaction.",
        choices=sql.choice_queries(dialect),
        annotations=sql.annotation_queries(dialect),
    )


# -- Prometheus ---------------------------------------------------------------------------------------------

PROMETHEUS_PANELS: Final[dict[str, PanelSpec]] = {
    "spend": PanelSpec(
        "stat",
        "Spend in range, and against the previous range",
        "sum over $__range of compactobs.cost, each series' first sample counted (the increase of a series "
        "that existed before the range, the whole value of one born in it: increase() alone misses a short "
        "job); previous: increase over the range before (0 without data). compactobs.cost is the billed "
        "USD of every iteration and of server tools.",
        USD,
        12,
        5,
    ),
    "compactions": PanelSpec(
        "stat",
        "Compactions and their cost share",
        "compactobs.compactions over $__range (first samples counted, as the spend); share = the "
        "compaction iterations' compactobs.cost / all of it, over $__range.",
        COUNT,
        12,
        5,
    ),
    "cost_by_model": PanelSpec(
        "timeseries",
        "Cost over time by model",
        "sum by model of rate(compactobs.cost[$__rate_interval]) x 3600: USD per hour, each iteration at "
        "its own model.",
        USD,
        16,
        8,
    ),
    "tokens_by_class": PanelSpec(
        "bargauge",
        "Billed tokens by class",
        "sum by token class of compactobs.tokens over $__range (first samples counted). The metrics carry "
        "cost by model and iteration type, not by token class: the PostgreSQL dashboard has the cost split.",
        COUNT,
        8,
        8,
    ),
    "cost_by_iteration_type": PanelSpec(
        "bargauge",
        "Cost by iteration type",
        "sum by iteration type (message, compaction, advisor_message, server_tools, ...) of "
        "compactobs.cost over $__range (first samples counted).",
        USD,
        12,
        6,
    ),
    "cache_hit_ratio": PanelSpec(
        "timeseries",
        "Cache hit ratio over time",
        "increase of compactobs.tokens{class=cache_read} / increase of compactobs.tokens{class=input, "
        "cache_read, cache_write_5m, cache_write_1h}, over $__rate_interval. Net savings need each "
        "iteration's rates: the PostgreSQL dashboard has them.",
        PERCENT,
        12,
        6,
    ),
    "errors_latency": PanelSpec(
        "timeseries",
        "Error rate and latency",
        "error rate = rate of gen_ai.client.operation.duration observations with error.type / all of "
        "them; p50/p95 = histogram_quantile over its buckets of successful calls (seconds).",
        SECONDS,
        24,
        8,
    ),
}
_PROM_OVERRIDES: Final[dict[str, dict[str, str]]] = {
    "compactions": {"share": PERCENT},
    "spend": {},
    "errors_latency": {"error rate": PERCENT},
}


def prometheus_dashboard() -> dict[str, Any]:
    queries = promql.queries()
    assert {q.panel for q in queries} == set(PROMETHEUS_PANELS), "every query has a panel"
    board = _dashboard(
        "compactobs: cost, cache and compaction (Prometheus)",
        "compactobs-prometheus",
        PROMETHEUS_TYPE,
        "compactobs' OpenTelemetry metrics, through OpenTelemetry's Prometheus exporter. $service is the "
        "scrape job; the metrics carry no conversation (unbounded cardinality): $conversation only follows "
        "the links to the PostgreSQL dashboard.",
        promql.choice_queries(),
    ).link(
        dashboard.DashboardLink("compactobs: conversations (PostgreSQL store)")
        .type(model.DashboardLinkType.LINK)
        .url("/d/compactobs-postgres")
        .tooltip("The PostgreSQL dashboard, with this range and $service, $model and $conversation")
        .include_vars(True)
        .keep_time(True)
        .icon("dashboard")
    )
    grid = Grid()
    for panel_id, (key, spec) in enumerate(PROMETHEUS_PANELS.items(), start=1):
        targets = []
        for index, query in enumerate(q for q in queries if q.panel == key):
            target = (
                prom.Dataquery()
                .expr(query.expr)
                .legend_format(query.legend)
                .ref_id(chr(ord("A") + index))
                .datasource(_datasource(PROMETHEUS_TYPE))
            )
            targets.append(target.instant() if query.instant else target.range())
        panel = _panel(spec, panel_id, grid, targets, PROMETHEUS_TYPE)
        for field, unit in _PROM_OVERRIDES.get(key, {}).items():
            panel = panel.override_by_name(field, [model.DynamicConfigValue(id_val="unit", value=unit)])
        board = board.with_panel(panel)
    return _as_json(board)


# -- output -------------------------------------------------------------------------------------------------


def _as_json(board: dashboard.Dashboard) -> dict[str, Any]:
    """The dashboard as JSON, read back once through the SDK's types: reading fills in the panels' defaults
    (e.g. a table's `custom` field config), so what is written is what the types make of it."""
    register_sql_query()
    built = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    data: dict[str, Any] = json.loads(json.dumps(model.Dashboard.from_json(built), cls=JSONEncoder))
    return data


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def outputs(spans_table: str = sql.SPANS_TABLE) -> dict[Path, str]:
    """Every generated file and its text."""
    return {
        POSTGRES_FILE: render(postgres_dashboard()),
        PROMETHEUS_FILE: render(prometheus_dashboard()),
        CLICKHOUSE_FILE: render(clickhouse_dashboard(spans_table)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed file is out of date")
    parser.add_argument(
        "--spans-table",
        default=sql.SPANS_TABLE,
        metavar="DB.TABLE",
        help=f"the ClickHouse dashboard's spans table [default: {sql.SPANS_TABLE}]",
    )
    args = parser.parse_args(argv)
    try:
        sql.valid_table(args.spans_table)
    except ValueError as err:
        parser.error(str(err))
    stale = []
    for path, text in outputs(args.spans_table).items():
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python -m dashboards.generate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
