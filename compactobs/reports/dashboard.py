"""The dashboards' SQL: the reports' own measures, over a time range a dashboard gives, compiled for it.

```python
for query in sql_queries(GRAFANA_POSTGRES):
    print(query.key, query.sql)       # what dashboards/generate.py puts in the Grafana panels
```

One implementation: every money, token and count measure here is the expression `report cost`
(`measures.cost.call_measures`, `measures.cost.iteration_measures`), `report cache` (`measures.cache` in
`sources.sql.cache.cache_statement`), `report ops`
(`ops.failed_call`) and `report anomalies` (`anomalies.error_burst_statement`,
`anomalies.unpriced_models_statement`) compute; what is derived from their sums (the cache's hit ratio and
net, shares, percentages) is derived here in SQL, and tests/dashboards/test_dashboards.py holds every
figure to the report's JSON on the same store.

Panels show current data: they read `calls` and `iterations`, never the rollups (which only a report
refreshes). The window is `since <= start_ms < until` on the indexed `start_ms`, as the reports' is.

A `Dialect` says how a dashboard names its range, its time buckets and its SQL dialect: `GRAFANA_POSTGRES`
is Grafana's PostgreSQL data source (`$__unixEpochFrom()`, `$__unixEpochTo()`, `$__unixEpochGroup`);
`GRAFANA_CLICKHOUSE` is Grafana's ClickHouse data source (grafana-clickhouse-datasource: `$__fromTime_ms`,
`$__toTime_ms`, Grafana's `$__interval_ms`) over the Collector's spans table
(`compactobs.reports.sources.clickhouse`), whose `calls` and `iterations` are CTEs read from the spans
(`spans.calls_select`, `spans.iterations_select`), and whose SQL is the same measures compiled by
clickhouse-connect's SQLAlchemy dialect, ClickHouse's differences from PostgreSQL handled in its compiler
(`reports.sources.clickhouse.dialect`, which the ClickHouse source compiles the measures with too).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, cast

from sqlalchemy import ColumnElement, Numeric, case, func, literal, literal_column, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect as SqlDialect
from sqlalchemy.sql.elements import ClauseElement

from compactobs.reports import anomalies, ops
from compactobs.reports.measures.cost import (
    CLASS_COSTS,
    call_measures,
    iteration_measures,
    top_level_measures,
)
from compactobs.reports.measures.groups import group_key
from compactobs.reports.sources.sql.cache import cache_statement
from compactobs.rules import billed_tokens_sql, over_limits_sql
from compactobs.store.models import calls, iterations

if TYPE_CHECKING:
    from sqlalchemy.sql.visitors import ExternallyTraversible

    from compactobs._types import SQLExpr, SQLLabel, SQLQuery

__all__ = [
    "ALL_VALUE",
    "CONVERSATION_VAR",
    "GRAFANA_CLICKHOUSE",
    "GRAFANA_POSTGRES",
    "MODEL_VAR",
    "SERVICE_VAR",
    "SPANS_TABLE",
    "TOP_CONVERSATIONS",
    "Dialect",
    "PanelQuery",
    "annotation_queries",
    "choice_queries",
    "sql_queries",
    "valid_table",
]

TOP_CONVERSATIONS: Final = 10
CONVERSATION_CALLS: Final = 500
"""The conversation panels list at most this many calls (the latest)."""
QueryFormat = Literal["table", "time_series"]

SERVICE_VAR: Final = "service"
MODEL_VAR: Final = "model"
CONVERSATION_VAR: Final = "conversation"
ALL_VALUE: Final = "*"
"""What a selection variable's "All" stands for; an empty value selects everything too."""


SPANS_TABLE: Final = "otel_traces"
"""The spans table the committed ClickHouse dashboard reads (the exporter's default). A constant in its SQL,
never a variable: a variable's value comes from the URL, and a table name cannot be quoted as a value.
`python -m dashboards.generate --spans-table DB.TABLE` writes the dashboard for another table."""
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def valid_table(name: str) -> str:
    """`name` if it is a table or database.table of plain identifiers; raises ValueError otherwise."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a table name: {name!r} (letters, digits and _, optionally database.table)")
    return name


def variable_text(name: str) -> str:
    """How a query names a selection variable's value: percent-encoded by Grafana (`:percentencode`), so
    that whatever a link or a URL puts in it reaches the SQL as letters, digits, `-_.~` and `%XX` only —
    no quote, backslash or `$` to end a string or start a macro — and decoded by the database."""
    return "${" + name + ":percentencode}"


@dataclass(frozen=True)
class Dialect:
    """How one dashboard backend says "the panel's time range" in SQL."""

    name: str
    sql: SqlDialect
    since_ms: SQLExpr
    """The range's start, epoch milliseconds."""
    until_ms: SQLExpr
    """The range's end (exclusive), epoch milliseconds."""
    bucket: Callable[[str], SQLExpr]
    """The time bucket of an epoch-ms column, given by its SQL text, as the data source reads a time."""
    moment: Callable[[str], SQLExpr]
    """An epoch-ms column, given by its SQL text, as the data source reads a time (one call's)."""
    percentile: Callable[[float, SQLExpr], SQLExpr]
    """The continuous percentile (linear interpolation, as `report ops`) of a column's non-NULL values."""
    materialize: bool = True
    spans_table: str = SPANS_TABLE
    """The ClickHouse spans table (a frame's), checked by `valid_table`."""
    """Whether a CTE computed once is marked MATERIALIZED (PostgreSQL's syntax)."""
    frame: Callable[[Dialect, SQLQuery, bool], str] | None = None
    """The statement as the data source runs it, for a backend without `calls` and `iterations` tables
    (`reaches_back`: the statement also reads the range before); None: `sql_text` of it."""
    decoded: Callable[[str], str] = lambda text: text
    """SQL for the string a percent-encoded literal (`variable_text`) stands for."""

    def chosen(self, name: str) -> SQLExpr:
        """The value of selection variable `name`, decoded."""
        return literal_column(self.decoded(variable_text(name)))

    def selection(self) -> list[ColumnElement[bool]]:
        """The dashboard's $service, $model (request or response model, as `--model`) and $conversation, on
        `calls`: each an equality, or everything when empty or All."""
        c = calls.c
        chosen = {name: self.chosen(name) for name in (SERVICE_VAR, MODEL_VAR, CONVERSATION_VAR)}
        columns = {
            SERVICE_VAR: [c.service_name],
            MODEL_VAR: [c.request_model, c.response_model],
            CONVERSATION_VAR: [c.conversation_id],
        }
        return [
            or_(value.in_([literal(""), literal(ALL_VALUE)]), *(column == value for column in columns[name]))
            for name, value in chosen.items()
        ]

    def window(self, start_ms: SQLExpr) -> list[ColumnElement[bool]]:
        """The dashboard's range on `start_ms` (of `calls`), and its selection."""
        return [start_ms >= self.since_ms, start_ms < self.until_ms, *self.selection()]

    def previous_window(self, start_ms: SQLExpr) -> list[ColumnElement[bool]]:
        """The range of the same length just before (for "against the previous range")."""
        since, until = self.since_ms, self.until_ms
        return [start_ms >= since - (until - since), start_ms < since, *self.selection()]

    def sql_text(self, statement: ClauseElement) -> str:
        return str(statement.compile(dialect=self.sql, compile_kwargs={"literal_binds": True}))

    def compile(self, statement: SQLQuery, reaches_back: bool = False) -> str:
        if self.frame is None:
            return self.sql_text(statement)
        return self.frame(self, statement, reaches_back)


def _postgres_decoded(text: str) -> str:
    """PostgreSQL has no URL decoding: split into `%XX` escapes and runs of plain characters, make bytes of
    each, join them in order and read them as UTF-8 ('' for an empty value)."""
    return (
        "(SELECT coalesce(convert_from(string_agg(CASE WHEN left(part[1], 1) = '%' "
        "THEN decode(substr(part[1], 2), 'hex') ELSE convert_to(part[1], 'UTF8') END, ''::bytea "
        f"ORDER BY n), 'UTF8'), '') FROM regexp_matches('{text}', '%[0-9A-Fa-f]{{2}}|[^%]+', 'g') "
        "WITH ORDINALITY AS parts(part, n))"
    )


GRAFANA_POSTGRES: Final = Dialect(
    name="grafana-postgresql",
    # "named" paramstyle: no bound parameters are rendered, and no % is doubled.
    sql=postgresql.dialect(paramstyle="named"),
    since_ms=literal_column("$__unixEpochFrom()::bigint") * 1000,
    until_ms=literal_column("$__unixEpochTo()::bigint") * 1000,
    bucket=lambda column: literal_column(f"$__unixEpochGroup({column} / 1000, $__interval)"),
    moment=lambda column: literal_column(f"{column} / 1000.0"),
    percentile=lambda p, value: func.percentile_cont(literal_column(str(p))).within_group(value),
    decoded=_postgres_decoded,
)


@dataclass(frozen=True)
class PanelQuery:
    """One panel's query: `key` names it for the dashboard generator and the tests."""

    key: str
    sql: str
    format: QueryFormat = "table"


def _measures(names: tuple[str, ...], measures: list[SQLLabel]) -> list[SQLLabel]:
    by_name = {m.name: m for m in measures}
    return [by_name[name] for name in names]


def _priced() -> ColumnElement[bool]:
    """Money is summed over priced calls only, as the reports' priced rows hold (NULL: no usage, no cost)."""
    return calls.c.priced.is_not(False)


def _ratio(part: SQLExpr, whole: SQLExpr) -> SQLExpr:
    """part / whole as an exact number, NULL when whole is 0 or NULL (NULLIF, not a CASE: ClickHouse
    computes both arms of a CASE, and an exact division by 0 raises)."""
    return func.cast(part, Numeric()) / func.nullif(whole, 0)


def _spend(d: Dialect) -> SQLQuery:
    """Spend in range, in the previous range, and the change."""

    def total(window: list[ColumnElement[bool]]) -> SQLExpr:
        (measure,) = _measures(("cost_usd",), call_measures())
        return select(func.coalesce(measure, 0)).where(*window, _priced()).scalar_subquery()

    now, before = total(d.window(calls.c.start_ms)), total(d.previous_window(calls.c.start_ms))
    # A materialized CTE, computed once: inlined, PostgreSQL ran each total at every use (4 scans a range).
    totals = select(now.label("cost_usd"), before.label("prev_cost_usd"))
    spans = totals.cte("spend")
    if d.materialize:
        spans = spans.prefix_with("MATERIALIZED")
    return select(
        spans.c.cost_usd,
        spans.c.prev_cost_usd,
        (spans.c.cost_usd - spans.c.prev_cost_usd).label("delta_cost_usd"),
        _ratio(spans.c.cost_usd - spans.c.prev_cost_usd, spans.c.prev_cost_usd).label("delta_cost_pct"),
    )


def _cost_by_model(d: Dialect) -> SQLQuery:
    """Cost per time bucket and model: each iteration at its own model (`report cost --by model`)."""
    model = group_key("model", calls, iterations).label("k_model")
    (measure,) = _measures(("cost_usd",), iteration_measures())
    time = d.bucket("calls.start_ms").label("time")
    source = calls.outerjoin(iterations, iterations.c.call_id == calls.c.call_id)
    return (
        select(time, model.element.label("metric"), func.coalesce(measure.element, 0).label("cost_usd"))
        .select_from(source)
        .where(*d.window(calls.c.start_ms), _priced())
        .group_by(time, model.element)
        .order_by(time, model.element)
    )


def _cost_by_token_class(d: Dialect) -> SQLQuery:
    return select(*_measures(CLASS_COSTS, call_measures())).where(*d.window(calls.c.start_ms), _priced())


def _compactions(d: Dialect) -> SQLQuery:
    """Compactions (every call), their cost and share of the priced cost."""
    (count,) = _measures(("compactions",), call_measures())
    money = select(*_measures(("cost_usd", "compaction_cost_usd"), call_measures())).where(
        *d.window(calls.c.start_ms), _priced()
    )
    m = money.subquery("priced")
    counted = select(func.coalesce(count, 0)).where(*d.window(calls.c.start_ms)).scalar_subquery()
    return select(
        counted.label("compactions"),
        func.coalesce(m.c.compaction_cost_usd, 0).label("compaction_cost_usd"),
        _ratio(func.coalesce(m.c.compaction_cost_usd, 0), m.c.cost_usd).label("compaction_share"),
    ).select_from(m)


def _top_level(d: Dialect) -> SQLQuery:
    """What the responses' top-level usage said (it leaves compaction iterations out) against the billed
    totals over every iteration."""
    billed_in, billed_out = _measures(("input_tokens", "output_tokens"), call_measures())
    shown_in, shown_out = top_level_measures()
    shown = shown_in.element + shown_out.element
    billed = billed_in.element + billed_out.element
    return select(
        shown_in,
        billed_in,
        shown_out,
        billed_out,
        _ratio(billed - shown, billed).label("left_out_share"),
    ).where(*d.window(calls.c.start_ms))


def _cache_over_time(d: Dialect) -> SQLQuery:
    """Hit ratio and net savings per time bucket (`report cache --by hour`), from the cache report's sums
    (without its wasted writes: their next-call lookups were most of the query's time)."""
    grouped = cache_statement(
        d.window(calls.c.start_ms), lambda c: [d.bucket("c.start_ms").label("time")], 0, waste=False
    ).subquery("g")
    g = grouped.c
    seen = g.input_tokens + g.cache_creation_5m_input_tokens + g.cache_creation_1h_input_tokens
    seen = seen + g.cache_read_input_tokens
    return select(
        g.time,
        _ratio(g.cache_read_input_tokens, seen).label("hit_ratio"),
        (func.coalesce(g.saved_usd, 0) - func.coalesce(g.write_premium_usd, 0)).label("net_usd"),
    ).order_by(g.time)


def _top_conversations(d: Dialect) -> SQLQuery:
    c = calls.c
    names = ("calls", "error_calls", "compactions", "cost_usd", "compaction_cost_usd")
    measures = _measures(names, call_measures())
    by_cost = measures[3].element
    return (
        select(c.conversation_id, *measures)
        .where(*d.window(c.start_ms), c.conversation_id.is_not(None), _priced())
        .group_by(c.conversation_id)
        .order_by(by_cost.desc().nulls_last(), c.conversation_id)
        .limit(TOP_CONVERSATIONS)
    )


def _error_bursts(d: Dialect) -> SQLQuery:
    burst = anomalies.error_burst_statement(d.window(calls.c.start_ms), anomalies.Thresholds()).subquery("b")
    b = burst.c
    return select(
        (b.hour * 3600000).label("hour_start"),
        b.calls,
        b.error_calls,
        _ratio(b.error_calls, b.calls).label("share"),
        b.http_429,
        b.http_529,
        b.retries,
    ).order_by(b.hour)


def _unpriced(d: Dialect) -> SQLQuery:
    unpriced = anomalies.unpriced_models_statement(d.window(calls.c.start_ms)).subquery("u")
    u = unpriced.c
    return select(u.model, u.calls, u.iterations, u.conversations, u.tokens).order_by(u.model)


def _errors_over_time(d: Dialect) -> SQLQuery:
    """Error rate (`report ops`: failed calls / calls) and latency percentiles of successful calls."""
    c = calls.c
    failed = ops.failed_call()
    time = d.bucket("calls.start_ms").label("time")
    ok_duration = case((~failed, c.duration_ms / 1000.0), else_=None)
    percentiles = [d.percentile(p, ok_duration).label(f"latency_p{round(p * 100)}") for p in ops.PERCENTILES]
    return (
        select(
            time,
            _ratio(func.sum(case((failed, 1), else_=0)), func.count()).label("error_rate"),
            *percentiles,
        )
        .where(*d.window(c.start_ms))
        .group_by(time)
        .order_by(time)
    )


def _one_conversation(d: Dialect) -> ColumnElement[bool]:
    """$conversation names one (the conversation panels are empty until it does)."""
    return d.chosen(CONVERSATION_VAR).not_in([literal(""), literal(ALL_VALUE)])


def _conversation_calls(d: Dialect) -> SQLQuery:
    """The chosen conversation's calls in order, as `report conversation` lists them: model, stop reason,
    compactions, context after the call against the trigger, cost (NULL when unpriced)."""
    c = calls.c
    return (
        select(
            d.moment("calls.start_ms").label("time"),
            c.call_id,
            c.request_id,
            func.coalesce(c.response_model, c.request_model).label("model"),
            c.status,
            c.stop_reason,
            func.coalesce(c.compactions_count, 0).label("compactions"),
            c.context_tokens,
            c.compaction_trigger.label("trigger_tokens"),
            c.cost_usd,
        )
        .where(*d.window(c.start_ms), _one_conversation(d))
        .order_by(c.start_ms, c.call_id)
        .limit(CONVERSATION_CALLS)
    )


def _conversation_context(d: Dialect) -> SQLQuery:
    """Per call of the chosen conversation: the context it left and the compaction trigger, and the context
    again on the calls that compacted (drawn as marks)."""
    c = calls.c
    compacted = case((c.compactions_count > 0, c.context_tokens), else_=None)
    return (
        select(
            d.moment("calls.start_ms").label("time"),
            c.context_tokens,
            c.compaction_trigger.label("trigger_tokens"),
            compacted.label("compacted_at"),
        )
        .where(*d.window(c.start_ms), _one_conversation(d), c.context_tokens.is_not(None))
        .order_by(c.start_ms, c.call_id)
        .limit(CONVERSATION_CALLS)
    )


def annotation_queries(d: Dialect = GRAFANA_POSTGRES) -> list[PanelQuery]:
    """The annotations' SQL (`time`, `text`), over the selection: the calls that compacted, and the calls
    at which a conversation went over the budget it stored (`rules.over_limits_sql`: its running spend,
    billed tokens and compactions above the largest budget any of its calls carried)."""
    c = calls.c
    compacting = (
        select(d.moment("calls.start_ms").label("time"), _compaction_text(c.conversation_id).label("text"))
        .where(*d.window(c.start_ms), c.compactions_count > 0)
        .order_by(c.start_ms)
    )
    order = [c.start_ms, c.call_id]
    running = {
        "spent": func.sum(c.cost_usd).over(partition_by=c.conversation_id, order_by=order, rows=(None, 0)),
        "tokens": func.sum(billed_tokens_sql()).over(
            partition_by=c.conversation_id, order_by=order, rows=(None, 0)
        ),
        "compactions": func.sum(func.coalesce(c.compactions_count, 0)).over(
            partition_by=c.conversation_id, order_by=order, rows=(None, 0)
        ),
    }
    budgets = {
        name: func.max(c[column]).over(partition_by=c.conversation_id)
        for name, column in (
            ("usd", "budget_usd"),
            ("tokens", "budget_tokens"),
            ("compactions", "budget_max_compactions"),
        )
    }
    totals = (
        select(
            c.conversation_id,
            c.call_id,
            c.start_ms,
            *(v.label(k) for k, v in running.items()),
            *(v.label(f"budget_{k}") for k, v in budgets.items()),
        )
        .where(c.conversation_id.is_not(None), c.start_ms < d.until_ms, *d.selection())
        .subquery("running")
    )
    r = totals.c
    over = over_limits_sql(
        r.budget_usd, r.budget_tokens, r.budget_compactions, r.spent, r.tokens, r.compactions
    )
    first = func.row_number().over(partition_by=r.conversation_id, order_by=[r.start_ms, r.call_id])
    crossings = select(r.conversation_id, r.start_ms, first.label("nth")).where(over).subquery("crossings")
    x = crossings.c
    breaches = (
        select(d.moment("crossings.start_ms").label("time"), _breach_text(x.conversation_id).label("text"))
        .where(x.nth == 1, x.start_ms >= d.since_ms)
        .order_by(x.start_ms)
    )
    return [
        PanelQuery("compactions", d.compile(compacting)),
        PanelQuery("guard_breaches", d.compile(breaches)),
    ]


def _compaction_text(conversation_id: SQLExpr) -> SQLExpr:
    return func.concat(
        literal("compaction in "), func.coalesce(conversation_id, literal("(no conversation)"))
    )


def _breach_text(conversation_id: SQLExpr) -> SQLExpr:
    return func.concat(literal("over its stored budget: "), conversation_id)


def choice_queries(d: Dialect = GRAFANA_POSTGRES) -> list[tuple[str, str]]:
    """(variable, the SQL listing its values over the dashboard's range) for $service and $model; not
    narrowed by the selection itself."""
    c = calls.c
    in_range = [c.start_ms >= d.since_ms, c.start_ms < d.until_ms]
    model = func.coalesce(c.response_model, c.request_model)
    listed = [(SERVICE_VAR, c.service_name), (MODEL_VAR, model)]
    return [
        (name, d.compile(select(column.label("value")).where(*in_range, column.is_not(None)).distinct()))
        for name, column in listed
    ]


def sql_queries(d: Dialect = GRAFANA_POSTGRES) -> list[PanelQuery]:
    """Every panel's SQL for `d`, in the dashboard's order."""
    statements: list[tuple[str, SQLQuery, QueryFormat]] = [
        ("spend", _spend(d), "table"),
        ("cost_by_model", _cost_by_model(d), "time_series"),
        ("cost_by_token_class", _cost_by_token_class(d), "table"),
        ("compactions", _compactions(d), "table"),
        ("top_level_vs_bill", _top_level(d), "table"),
        ("cache_over_time", _cache_over_time(d), "time_series"),
        ("top_conversations", _top_conversations(d), "table"),
        ("error_bursts", _error_bursts(d), "table"),
        ("unpriced_models", _unpriced(d), "table"),
        ("errors_latency", _errors_over_time(d), "time_series"),
        ("conversation_calls", _conversation_calls(d), "table"),
        ("conversation_context", _conversation_context(d), "time_series"),
    ]
    # Only the spend panel reads the range before (its "previous range").
    return [PanelQuery(key, d.compile(statement, key == "spend"), fmt) for key, statement, fmt in statements]


# -- ClickHouse: Grafana's ClickHouse data source over the Collector's spans table -------------------------


_CLICKHOUSE_SETTINGS: Final = "join_use_nulls = 1, cast_keep_nullable = 1"
_SINCE_MS: Final = "toUnixTimestamp64Milli($__fromTime_ms)"
_UNTIL_MS: Final = "toUnixTimestamp64Milli($__toTime_ms)"


def _per_call_lookups(statement: SQLQuery) -> tuple[SQLQuery, list[tuple[str, SQLQuery]]]:
    """The statement with each scalar subquery over `iterations` correlated to its call by `call_id` (e.g.
    `call_measures`' compaction cost) replaced by a column of `calls`, and those columns: (name, the
    subquery's own SELECT grouped by call_id instead). ClickHouse runs no correlated subquery inside an
    aggregate's argument; a LEFT JOIN on call_id gives each call the same value (NULL without rows)."""
    from sqlalchemy.sql.elements import BinaryExpression
    from sqlalchemy.sql.selectable import ScalarSelect
    from sqlalchemy.sql.visitors import replacement_traverse

    lookups: list[tuple[str, SQLQuery]] = []

    def correlated(clause: object) -> bool:
        return (
            isinstance(clause, BinaryExpression)
            and clause.left is iterations.c.call_id
            and clause.right is calls.c.call_id
        )

    def replace(element: ExternallyTraversible, **kw: object) -> SQLExpr | None:
        if not isinstance(element, ScalarSelect):
            return None
        # A Select: its WHERE criteria are read through SQLAlchemy's attribute.
        inner = cast("SQLQuery", element.element)
        conditions = list(inner._where_criteria)
        if not any(correlated(c) for c in conditions):
            return None
        name = f"per_call_{len(lookups)}"
        (value,) = inner.selected_columns
        grouped = (
            select(iterations.c.call_id.label("call_id"), value.label("value"))
            .where(*(c for c in conditions if not correlated(c)))
            .group_by(iterations.c.call_id)
        )
        lookups.append((name, grouped))
        return literal_column(f"calls.{name}", type_=element.type)

    options: dict[str, object] = {}
    return cast("SQLQuery", replacement_traverse(statement, options, replace)), lookups


def _clickhouse_frame(d: Dialect, statement: SQLQuery, reaches_back: bool) -> str:
    """`calls` and `iterations` as CTEs read from the spans of `Dialect.spans_table`, the range pushed down
    onto the spans' `Timestamp` (their sort key's time; an iteration span starts when its call ends, so no
    upper bound on them), and two settings: `join_use_nulls`, as ClickHouse otherwise fills an outer join's
    missing side with 0 and '', where the measures read NULL (a call without iteration rows); and
    `cast_keep_nullable`, as its CAST of a NULL to a plain type raises, where SQL's gives NULL (a sum of
    no top-level tokens, cast for an exact division)."""
    from compactobs.reports.sources.clickhouse import spans

    statement, lookups = _per_call_lookups(statement)
    sql = d.sql_text(statement)
    lower = f"{_SINCE_MS} - ({_UNTIL_MS} - {_SINCE_MS})" if reaches_back else _SINCE_MS
    from_lower = f"Timestamp >= fromUnixTimestamp64Milli(toInt64({lower}))"
    table = valid_table(d.spans_table)
    call_rows = spans.calls_select(table, f"{from_lower} AND Timestamp < $__toTime_ms")
    if lookups:
        columns = ", ".join(f"{name}.value AS {name}" for name, _ in lookups)
        joins = " ".join(
            f"LEFT JOIN ({d.sql_text(grouped)}) AS {name} ON {name}.call_id = spans_calls.call_id"
            for name, grouped in lookups
        )
        call_rows = f"SELECT spans_calls.*, {columns} FROM ({call_rows}) AS spans_calls {joins}"
    relations = f"iterations AS ({spans.iterations_select(table, from_lower)}), calls AS ({call_rows})"
    body = sql[len("WITH ") :] if sql.startswith("WITH ") else sql
    joiner = ", " if body is not sql else "\n"
    return f"WITH {relations}{joiner}{body}\nSETTINGS {_CLICKHOUSE_SETTINGS}"


def _clickhouse_dialect() -> Dialect:
    """GRAFANA_CLICKHOUSE, built when first asked for: clickhouse-connect is an optional dependency."""
    from compactobs.reports.sources.clickhouse.dialect import clickhouse_dialect, percentile

    return Dialect(
        name="grafana-clickhouse",
        sql=clickhouse_dialect(),
        since_ms=literal_column(_SINCE_MS),
        until_ms=literal_column(_UNTIL_MS),
        bucket=lambda column: literal_column(
            f"fromUnixTimestamp64Milli(toInt64(intDiv({column}, $__interval_ms) * $__interval_ms), 'UTC')"
        ),
        moment=lambda column: literal_column(f"fromUnixTimestamp64Milli(toInt64({column}), 'UTC')"),
        percentile=percentile,
        materialize=False,
        frame=_clickhouse_frame,
        decoded=lambda text: f"decodeURLComponent('{text}')",
    )


GRAFANA_CLICKHOUSE: Dialect
"""Grafana's ClickHouse data source (module attribute, built on first use: see `__getattr__`)."""
_LAZY: dict[str, Dialect] = {}


def __getattr__(name: str) -> Dialect:
    if name == "GRAFANA_CLICKHOUSE":
        if name not in _LAZY:
            _LAZY[name] = _clickhouse_dialect()
        return _LAZY[name]
    raise AttributeError(name)
