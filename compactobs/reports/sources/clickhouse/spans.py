"""compactobs' spans in the Collector's `otel_traces` table, read as the SQL store's `calls` and `iterations`.

The ClickHouse exporter of the OpenTelemetry Collector (opentelemetry-collector-contrib,
exporter/clickhouseexporter: its traces table DDL and `AttributesToMap`) writes one row per span: `Timestamp`
(the start, DateTime64(9)), `TraceId`, `SpanId`, `ParentSpanId` (hex), `SpanName`, `SpanKind`,
`ServiceName` (the resource's service.name), `ScopeName`, `Duration` (nanoseconds), `StatusCode`
(`STATUS_CODE_ERROR`, ...) and `SpanAttributes Map(LowCardinality(String), String)`, every attribute value
turned into a string (`AsString`: ints in decimal, booleans `true`/`false`, floats in their shortest form).

Here the same columns the SQL store fills come from the same attributes (`compactobs.store.mapping`'s
CALL_ATTRIBUTES and ITERATION_ATTRIBUTES), each converted to its column's type (`compactobs.store.models`),
and the computed ones (ids, times, status, attempts) by the store's rules. A column added to the store's
mapping is a column here too. Money is `Decimal(38, 10)`: the attribute's digits rounded half away from zero
to 10 places, exactly what PostgreSQL's NUMERIC(20, 10) column keeps of the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import tzinfo
from typing import Final

from sqlalchemy import Boolean, Float, Integer, Numeric, String

from compactobs import semconv as t
from compactobs.reports.model import Filters
from compactobs.reports.sources.clickhouse.client import ClickHouseClient, quote, system_table_condition
from compactobs.reports.times import MS_PER_DAY, MS_PER_HOUR, utc_offsets
from compactobs.store.mapping import CALL_ATTRIBUTES, ITERATION_ATTRIBUTES
from compactobs.store.models import calls, iterations

__all__ = [
    "MONEY_SCALE",
    "call_conditions",
    "calls_relation",
    "glob_condition",
    "iterations_relation",
    "local_bucket",
    "money",
]

MONEY_SCALE: Final = 10
"""Decimal places of money, as the store's NUMERIC(20, 10)."""
_WIDE: Final = 30


def money(text: str) -> str:
    """An attribute's text as Decimal(38, 10). The text may carry more digits (a float's shortest form,
    or an exponent): it is read at 30 places, then rounded half away from zero, as NUMERIC(20, 10) does."""
    return f"toDecimal128(round(toDecimal256OrNull({text}, {_WIDE}), {MONEY_SCALE}), {MONEY_SCALE})"


def _typed(column_type: object, attribute: str) -> str:
    """The attribute's value as SQL of the store column's type; NULL when the span does not carry it."""
    value = f"SpanAttributes[{quote(attribute)}]"
    if isinstance(column_type, Boolean):
        return f"multiIf({value} = 'true', true, {value} = 'false', false, NULL)"
    if isinstance(column_type, Integer):  # BigInteger is an Integer
        return f"toInt64OrNull({value})"
    if isinstance(column_type, Numeric):
        return money(f"nullIf({value}, '')")
    if isinstance(column_type, Float):
        return f"toFloat64OrNull({value})"
    if isinstance(column_type, String):
        return f"if(mapContains(SpanAttributes, {quote(attribute)}), {value}, NULL)"
    raise TypeError(f"no ClickHouse conversion for {column_type!r}")


def _kind(column_type: object) -> str:
    """The ClickHouse type (inside Nullable) of an attribute read as the store column's type."""
    if isinstance(column_type, Boolean):
        return "Bool"
    if isinstance(column_type, Integer):
        return "Int64"
    if isinstance(column_type, Numeric):
        return f"Decimal(38, {MONEY_SCALE})"
    if isinstance(column_type, Float):
        return "Float64"
    if isinstance(column_type, String):
        return "String"
    raise TypeError(f"no ClickHouse conversion for {column_type!r}")


def _null(column_type: object) -> str:
    """NULL of the store column's type: a bare NULL is Nullable(Nothing), which no table can hold."""
    return f"CAST(NULL, 'Nullable({_kind(column_type)})')"


_START_NS: Final = "toUnixTimestamp64Nano(Timestamp)"
_COMPUTED_CALL: Final = {
    "call_id": "SpanId",
    "trace_id": "TraceId",
    "service_name": "nullIf(toString(ServiceName), '')",
    "start_time": "Timestamp",
    "start_ms": f"intDiv({_START_NS}, 1000000)",
    "end_ms": f"intDiv({_START_NS} + toInt64(Duration), 1000000)",
    "duration_ms": "toInt64(Duration) / 1e6",
    "status": "multiIf(StatusCode IN ('STATUS_CODE_ERROR', 'Error'), 'ERROR', "
    "StatusCode IN ('STATUS_CODE_OK', 'Ok'), 'OK', 'UNSET')",
    # No resend count on the span still means the request went out once (as the store's mapping).
    "attempts": f"coalesce(toInt64OrNull(SpanAttributes[{quote(t.HTTP_RESEND_COUNT)}]) + 1, 1)",
    "ttft_ms": f"toFloat64OrNull(SpanAttributes[{quote(t.RESPONSE_TIME_TO_FIRST_CHUNK)}]) * 1000.0",
}
_TAG_ATTRIBUTES: Final = f"mapFilter((k, v) -> startsWith(k, {quote(t.TAG_PREFIX)}), SpanAttributes)"
# The call's `compactobs.tag.*` attributes as the store's `tags` column: a JSON object, KEY: value (NULL when
# none). A reader takes one key out with JSONExtractString (`measures.groups.tag_value`).
_COMPUTED_CALL["tags"] = (
    f"if(empty({_TAG_ATTRIBUTES}), NULL, toJSONString(mapApply((k, v) -> "
    f"(substring(k, {len(t.TAG_PREFIX) + 1}), v), {_TAG_ATTRIBUTES})))"
)
_ADDED_COMPUTED: Final = frozenset({"tags"})
"""Computed columns newer than the typed tables of an older setup: added to them like attribute columns."""
_COMPUTED_ITERATION: Final = {
    "call_id": "ParentSpanId",
    "start_ms": f"intDiv({_START_NS}, 1000000)",
}


def _select_list(columns: Sequence[object], attributes: dict[str, str], computed: dict[str, str]) -> str:
    parts = []
    for column in columns:
        name = column.name  # type: ignore[attr-defined]
        if name in computed:
            parts.append(f"{computed[name]} AS {name}")
        elif name in attributes:
            parts.append(f"{_typed(column.type, attributes[name])} AS {name}")  # type: ignore[attr-defined]
        else:
            parts.append(f"{_null(column.type)} AS {name}")  # type: ignore[attr-defined]
    return ",\n    ".join(parts)


def _of_kind(kind: str) -> str:
    scope = quote(t.INSTRUMENTATION_SCOPE)
    return f"ScopeName = {scope} AND SpanAttributes[{quote(t.SPAN_KIND)}] = {quote(kind)}"


def calls_select(table: str, where: str = "") -> str:
    """SELECT of the columns of the store's `calls`, one row per call span of `table`. `where`: a
    condition on otel_traces' own columns, pushed down (e.g. a Timestamp range)."""
    extra = f" AND ({where})" if where else ""
    select = _select_list(list(calls.columns), CALL_ATTRIBUTES, _COMPUTED_CALL)
    return f"SELECT\n    {select}\nFROM {table}\nWHERE {_of_kind(t.SPAN_KIND_CALL)}{extra}"


def calls_relation(table: str, where: str = "") -> str:
    return f"({calls_select(table, where)})"


def iterations_select(table: str, where: str = "") -> str:
    """SELECT of the columns of the store's `iterations`, one row per iteration span that can be keyed (a
    parent and an integer index, as the store's mapping requires)."""
    extra = f" AND ({where})" if where else ""
    select = _select_list(list(iterations.columns), ITERATION_ATTRIBUTES, _COMPUTED_ITERATION)
    index = f"SpanAttributes[{quote(t.ITERATION_INDEX)}]"
    return (
        f"SELECT\n    {select}\nFROM {table}\nWHERE {_of_kind(t.SPAN_KIND_ITERATION)}"
        f" AND ParentSpanId != '' AND toInt64OrNull({index}) IS NOT NULL{extra}"
    )


def iterations_relation(table: str, where: str = "") -> str:
    return f"({iterations_select(table, where)})"


def typed_names(table: str) -> tuple[str, str]:
    """The typed tables `compactobs clickhouse setup` fills from `table`, in its database."""
    return _beside(table, "compactobs_calls"), _beside(table, "compactobs_iterations")


def _beside(table: str, name: str) -> str:
    """`name` in the database of `table` (optionally `db.table`)."""
    database, dot, _ = table.rpartition(".")
    return f"{database}{dot}{name}"


TURN_COLUMNS: Final = (
    "conversation_id",
    "start_ms",
    "call_id",
    "request_model",
    "response_model",
    "service_name",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "context_tokens",
    "compactions_count",
    "compactions_failed",
    "compaction_trigger",
    "cost_usd",
)
"""The columns of the turns table: what the per-conversation rules of `report anomalies` read, and the
window's filters."""


TURNS_PARTITIONS: Final = 4
TURNS_PARTITION_KEY: Final = f"cityHash64(conversation_id) % {TURNS_PARTITIONS}"
TURNS_SETTINGS: Final = {"do_not_merge_across_partitions_select_final": 1}
"""For queries that read the turns table FINAL: exact, as a row's key fixes its partition."""
TURNS_WINDOW_SETTINGS: Final = {**TURNS_SETTINGS, "optimize_read_in_window_order": 1}
"""For windows over each partition of the turns table read on its own (`turns_of(partition=)`): the calls
streamed in the table's order, not sorted again (the setting is off by default in ClickHouse 26.9; over the
whole table it would run the windows on one thread)."""


def turns_name(table: str) -> str:
    """The turns table `compactobs clickhouse setup` fills from the typed calls: a conversation's calls in
    their order."""
    return _beside(table, "compactobs_turns")


def turns_setup_statements(table: str) -> list[str]:
    """The turns table, sorted by (conversation_id, start_ms, call_id): a window over a conversation's
    calls in that order reads them in order (`TURNS_WINDOW_SETTINGS`) instead of sorting and holding every
    call (at 10M calls, ~2.6 s instead of ~11 s, 0.7 GB instead of 2.1 GB). Partitioned by conversation
    (`TURNS_PARTITIONS` hash buckets), not by month: a conversation's calls are one range of one partition,
    so FINAL need not merge across partitions (`TURNS_SETTINGS`), and a query reads each partition as one
    sorted stream, the windows over the partitions running side by side (`turns_of(partition=)`). Filled by
    a view on the typed calls, then from them."""
    calls_table = typed_names(table)[0]
    name = turns_name(table)
    columns = ", ".join(TURN_COLUMNS)
    select = f"SELECT {columns} FROM {calls_table} WHERE conversation_id IS NOT NULL"
    key = ("conversation_id", "start_ms", "call_id")
    return [
        f"CREATE TABLE IF NOT EXISTS {name} ENGINE = ReplacingMergeTree "
        f"PARTITION BY {TURNS_PARTITION_KEY} ORDER BY ({', '.join(key)}) "
        f"SETTINGS allow_nullable_key = 1 EMPTY AS {select}",
        # A turns table of an older setup gains the newer columns; the view is made again to fill them,
        # and the INSERT below fills its rows (the newer copy of a row is the one a merge keeps).
        *(
            f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {column} "
            f"Nullable({_kind(calls.columns[column].type)})"
            for column in TURN_COLUMNS
            if column not in key
        ),
        f"DROP VIEW IF EXISTS {name}_mv",
        f"CREATE MATERIALIZED VIEW {name}_mv TO {name} AS {select}",
        f"INSERT INTO {name} ({columns}) SELECT {columns} FROM {calls_table} FINAL "
        "WHERE conversation_id IS NOT NULL",
        f"OPTIMIZE TABLE {name} FINAL",
    ]


def has_turns(source: ClickHouseClient) -> bool:
    return bool(source.typed and getattr(source, "turns", False))


def turns_of(source: ClickHouseClient, filters: Filters | None = None, partition: int | None = None) -> str:
    """The calls of conversations with the `TURN_COLUMNS`, in the turns table when setup made it (windows
    over a conversation then get them in order), else from `calls_of`. `partition`: only the turns table's
    partition of that number (`TURNS_PARTITIONS`), whose calls a window reads as one sorted stream."""
    if not has_turns(source):
        return calls_of(source, filters)
    window = [] if filters is None else call_conditions(Filters(filters.since, filters.until, filters.tz))
    if partition is not None:
        window.append(f"{TURNS_PARTITION_KEY} = {int(partition)}")
    where = " WHERE " + " AND ".join(window) if window else ""
    return f"(SELECT * FROM {turns_name(source.table)} FINAL{where})"


def has_columns(source: ClickHouseClient, table: str, names: Sequence[str]) -> bool:
    """Whether `table` (optionally `db.table`) holds every column of `names`."""
    where = system_table_condition(table, "table")
    have = {r["name"] for r in source.rows(f"SELECT name FROM system.columns WHERE {where}")}
    return all(column in have for column in names)


def typed_columns_current(source: ClickHouseClient) -> bool:
    """Whether the typed tables hold every column of the store's `calls` and `iterations`."""
    return all(
        has_columns(source, table, [column.name for column in columns])
        for table, columns in zip(typed_names(source.table), (calls.columns, iterations.columns), strict=True)
    )


def calls_of(source: ClickHouseClient, filters: Filters | None = None) -> str:
    """The calls of the spans table as a subquery (with `filters`, only its window's, pushed down): the
    typed table of `compactobs clickhouse setup` when there is one, else read from the spans' attributes."""
    if source.typed:
        window = [] if filters is None else call_conditions(Filters(filters.since, filters.until, filters.tz))
        where = " WHERE " + " AND ".join(window) if window else ""
        return f"(SELECT * FROM {typed_names(source.table)[0]} FINAL{where})"
    return calls_relation(source.table, timestamp_window(filters) if filters is not None else "")


def iterations_of(source: ClickHouseClient, since_ms: int | None = None) -> str:
    """The iterations (with `since_ms`: of calls that started then or later: an iteration span starts
    when its call ends)."""
    if source.typed:
        where = f" WHERE start_ms >= {int(since_ms)}" if since_ms is not None else ""
        return f"(SELECT * FROM {typed_names(source.table)[1]} FINAL{where})"
    lower = f"Timestamp >= fromUnixTimestamp64Milli(toInt64({int(since_ms)}))" if since_ms is not None else ""
    return iterations_relation(source.table, lower)


def setup_statements(table: str) -> list[str]:
    """`compactobs clickhouse setup`: typed tables of the calls and iterations, materialised views that fill
    them as the Collector inserts spans, then the spans already there (a span inserted meanwhile lands twice,
    once per way in; ReplacingMergeTree keeps one, and the reports read FINAL)."""
    calls_table, iterations_table = typed_names(table)
    out: list[str] = []
    for name, select, order, columns, computed in (
        (calls_table, calls_select(table), "start_ms, call_id", calls.columns, _COMPUTED_CALL),
        (
            iterations_table,
            iterations_select(table),
            "start_ms, call_id, idx",
            iterations.columns,
            _COMPUTED_ITERATION,
        ),
    ):
        names = ", ".join(column.name for column in columns)
        out += [
            f"CREATE TABLE IF NOT EXISTS {name} ENGINE = ReplacingMergeTree "
            "PARTITION BY toYYYYMM(toDate(intDiv(start_ms, 1000))) "
            f"ORDER BY ({order}) SETTINGS allow_nullable_key = 1 EMPTY AS {select}",
            # A table made by an older compactobs gains the store's newer columns (all read from attributes,
            # so Nullable); the view is made again to fill them, and the INSERT below fills the rows there.
            *(
                f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {column.name} Nullable({_kind(column.type)})"
                for column in columns
                if column.name not in computed or column.name in _ADDED_COMPUTED
            ),
            f"DROP VIEW IF EXISTS {name}_mv",
            f"CREATE MATERIALIZED VIEW {name}_mv TO {name} AS {select}",
            # By name, not position: an added column is the table's last.
            f"INSERT INTO {name} ({names}) {select}",
            f"OPTIMIZE TABLE {name} FINAL",
        ]
    return out


def glob_condition(columns: Sequence[str], patterns: Sequence[str]) -> str:
    """Equality for plain values, LIKE for `*`/`?` globs, OR-ed over columns and values (the store's rule:
    `compactobs.reports.model.Filters`)."""
    plain = [p for p in patterns if not any(ch in p for ch in "*?[")]
    globs = [p for p in patterns if p not in plain]
    conditions: list[str] = []
    for column in columns:
        if plain:
            conditions.append(f"{column} IN ({', '.join(quote(p) for p in plain)})")
        for pattern in globs:
            escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(f"{column} LIKE {quote(escaped.replace('*', '%').replace('?', '_'))}")
    return "(" + " OR ".join(conditions) + ")"


def call_conditions(filters: Filters, prefix: str = "") -> list[str]:
    """`Filters.call_conditions` over a `calls_relation` (columns named `{prefix}start_ms`, ...)."""
    p = prefix
    conditions: list[str] = []
    if filters.since_ms is not None:
        conditions.append(f"{p}start_ms >= {filters.since_ms}")
    if filters.until_ms is not None:
        conditions.append(f"{p}start_ms < {filters.until_ms}")
    if filters.conversations:
        conditions.append(glob_condition([f"{p}conversation_id"], filters.conversations))
    conditions += model_service_conditions(
        filters, f"{p}request_model", f"{p}response_model", f"{p}service_name"
    )
    return conditions


def model_service_conditions(
    filters: Filters, request_model: str, response_model: str, service: str
) -> list[str]:
    conditions: list[str] = []
    if filters.models:
        conditions.append(glob_condition([request_model, response_model], filters.models))
    if filters.services:
        conditions.append(glob_condition([service], filters.services))
    return conditions


def timestamp_window(filters: Filters) -> str:
    """The window as a condition on otel_traces' `Timestamp` (its sort key's time), to push down: the
    milliseconds the calls relation computes are the floor of the nanoseconds, so the same spans."""
    conditions = []
    if filters.since_ms is not None:
        conditions.append(f"Timestamp >= fromUnixTimestamp64Milli(toInt64({filters.since_ms}))")
    if filters.until_ms is not None:
        conditions.append(f"Timestamp < fromUnixTimestamp64Milli(toInt64({filters.until_ms}))")
    return " AND ".join(conditions)


def local_bucket(column: str, unit: str, tz: tzinfo, lo_ms: int, hi_ms: int) -> str:
    """`_common.local_bucket` in ClickHouse SQL: the local hour, day or week number of an epoch-ms column,
    from the zone's UTC offsets over the data's range (the same offsets, so the same buckets)."""
    offsets = utc_offsets(tz, lo_ms, hi_ms)
    if len(offsets) == 1:
        offset = str(offsets[0][1])
    else:
        arms = [
            f"{column} < {start}, {previous}"
            for (start, _), (_, previous) in zip(offsets[1:], offsets[:-1], strict=True)
        ]
        offset = f"multiIf({', '.join(arms)}, {offsets[-1][1]})"
    local_ms = f"({column} + {offset})"
    if unit == "hour":
        return f"intDiv({local_ms}, {MS_PER_HOUR})"
    day = f"intDiv({local_ms}, {MS_PER_DAY})"
    if unit == "day":
        return day
    return f"intDiv({day} + 3, 7)"
