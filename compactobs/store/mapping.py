"""Spans to rows: compactobs' call and iteration spans become `calls` and `iterations` rows.

Every other span is skipped after one look at its instrumentation scope and `compactobs.span.kind`.

This runs for every call, so a row is built in one C-level pass, `map(attributes.get, keys)`, over a
per-table list saying which attribute fills which column, then the few computed columns (ids, times,
status, attempts) are set. Values are taken as the span carries them: compactobs' own telemetry types
them. Should a database refuse a batch for its values, `sanitize` coerces every value to its column's
type and the batch is tried again, then row by row, setting aside what is still refused (see the
exporter).

Row values are plain JSON types (str, int, float, bool, None), so the spool can hold them as they are:
- money stays the float the pricer emitted. PostgreSQL receives its shortest repr as text (COPY text
  format) and parses that as NUMERIC, which is exactly `Decimal(repr(value))`: $0.14 is stored as 0.14,
  never 0.14000000000000001332. SQLite has no decimal type: it stores REAL either way;
- `start_time` is UTC text: `YYYY-MM-DD HH:MM:SS.ffffff`, the format SQLAlchemy itself writes for a
  DateTime on SQLite (so the ORM and SQL date functions read it), with `+00:00` for PostgreSQL.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode
from sqlalchemy import BigInteger, Boolean, Float, Integer, Numeric, String, Table

from compactobs import semconv as t
from compactobs._types import SQLValue
from compactobs.store.models import USD_LIMIT, calls, iterations
from compactobs.untrusted import MAX_ID_CHARS, bounded_id, bounded_tags

__all__ = [
    "CALL_ATTRIBUTES",
    "CALL_COLUMNS",
    "ITERATION_ATTRIBUTES",
    "ITERATION_COLUMNS",
    "Row",
    "RowMapper",
    "group_by_call",
    "sanitize",
    "tags_json",
]

Row = list[SQLValue]

CALL_COLUMNS: Final = tuple(column.name for column in calls.columns)
ITERATION_COLUMNS: Final = tuple(column.name for column in iterations.columns)

# Columns filled straight from one attribute. Every other column is computed below.
_CALL_ATTRIBUTES: Final = {
    "conversation_id": t.CONVERSATION_ID,
    "provider": t.PROVIDER_NAME,
    "operation": t.OPERATION_NAME,
    "request_model": t.REQUEST_MODEL,
    "response_model": t.RESPONSE_MODEL,
    "response_id": t.RESPONSE_ID,
    "request_id": t.ANTHROPIC_REQUEST_ID,
    "stop_reason": t.STOP_REASON,
    "error_type": t.ERROR_TYPE,
    "http_status": t.HTTP_STATUS_CODE,
    "attempts": t.HTTP_RESEND_COUNT,  # + 1 below
    "stream": t.REQUEST_STREAM,
    "ttft_ms": t.RESPONSE_TIME_TO_FIRST_CHUNK,  # seconds, x 1000 below
    "stream_end": t.STREAM_END,
    "compaction_trigger": t.COMPACTION_TRIGGER,
    "compaction_pause_after": t.COMPACTION_PAUSE_AFTER,
    "compaction_on_demand": t.COMPACTION_ON_DEMAND,
    "service_tier": t.SERVICE_TIER,
    "speed": t.SPEED,
    "inference_geo": t.INFERENCE_GEO,
    "region": t.CLOUD_REGION,
    "batch_id": t.BATCH_ID,
    "custom_id": t.BATCH_CUSTOM_ID,
    "input_tokens": t.TOKENS_INPUT,
    "output_tokens": t.TOKENS_OUTPUT,
    "cache_read_tokens": t.TOKENS_CACHE_READ,
    "cache_write_5m_tokens": t.TOKENS_CACHE_WRITE_5M,
    "cache_write_1h_tokens": t.TOKENS_CACHE_WRITE_1H,
    "web_search_requests": t.WEB_SEARCH_REQUESTS,
    "web_fetch_requests": t.WEB_FETCH_REQUESTS,
    "reasoning_tokens": t.USAGE_REASONING,
    "top_level_input_tokens": t.TOKENS_TOP_LEVEL_INPUT,
    "top_level_output_tokens": t.TOKENS_TOP_LEVEL_OUTPUT,
    "cost_usd": t.COST_USD,
    "priced": t.COST_PRICED,
    "pricing_version": t.PRICING_VERSION,
    "cost_input_usd": t.COST_INPUT,
    "cost_output_usd": t.COST_OUTPUT,
    "cost_cache_read_usd": t.COST_CACHE_READ,
    "cost_cache_write_5m_usd": t.COST_CACHE_WRITE_5M,
    "cost_cache_write_1h_usd": t.COST_CACHE_WRITE_1H,
    "cost_server_tools_usd": t.COST_SERVER_TOOLS,
    "iterations_count": t.ITERATIONS_COUNT,
    "compactions_count": t.COMPACTIONS_COUNT,
    "compactions_failed": t.COMPACTIONS_FAILED,
    "compactions_errored": t.COMPACTIONS_ERRORED,
    "context_tokens": t.CONTEXT_TOKENS,
    "budget_usd": t.BUDGET_USD,
    "budget_tokens": t.BUDGET_TOKENS,
    "budget_max_compactions": t.BUDGET_MAX_COMPACTIONS,
    "source_cost_usd": t.SOURCE_COST_USD,
}
_ITERATION_ATTRIBUTES: Final = {
    "idx": t.ITERATION_INDEX,
    "type": t.ITERATION_TYPE,
    "model": t.RESPONSE_MODEL,
    "known_type": t.ITERATION_KNOWN_TYPE,
    "declined": t.ITERATION_DECLINED,
    "input_tokens": t.TOKENS_INPUT,
    "output_tokens": t.TOKENS_OUTPUT,
    "cache_read_tokens": t.TOKENS_CACHE_READ,
    "cache_write_5m_tokens": t.TOKENS_CACHE_WRITE_5M,
    "cache_write_1h_tokens": t.TOKENS_CACHE_WRITE_1H,
    "cost_usd": t.COST_USD,
    "priced": t.COST_PRICED,
    "cost_input_usd": t.COST_INPUT,
    "cost_output_usd": t.COST_OUTPUT,
    "cost_cache_read_usd": t.COST_CACHE_READ,
    "cost_cache_write_5m_usd": t.COST_CACHE_WRITE_5M,
    "cost_cache_write_1h_usd": t.COST_CACHE_WRITE_1H,
}
CALL_ATTRIBUTES: Final = _CALL_ATTRIBUTES
"""Which span attribute fills which `calls` column as it is (the OTLP replay reads it backwards; readers
of other sinks, e.g. ClickHouse, use it too)."""
ITERATION_ATTRIBUTES: Final = _ITERATION_ATTRIBUTES
# "" is no attribute name, so a computed column starts as None.
_CALL_KEYS: Final = tuple(_CALL_ATTRIBUTES.get(name, "") for name in CALL_COLUMNS)
_ITERATION_KEYS: Final = tuple(_ITERATION_ATTRIBUTES.get(name, "") for name in ITERATION_COLUMNS)

_C = {name: i for i, name in enumerate(CALL_COLUMNS)}
_C_CALL_ID, _C_TRACE_ID, _C_SERVICE = _C["call_id"], _C["trace_id"], _C["service_name"]
_C_START_TIME, _C_START_MS = _C["start_time"], _C["start_ms"]
_C_END_MS, _C_DURATION = _C["end_ms"], _C["duration_ms"]
_C_STATUS, _C_ATTEMPTS, _C_TTFT = _C["status"], _C["attempts"], _C["ttft_ms"]
_C_TAGS = _C["tags"]
_I = {name: i for i, name in enumerate(ITERATION_COLUMNS)}
_I_CALL_ID, _I_IDX, _I_START_MS = _I["call_id"], _I["idx"], _I["start_ms"]

_C_IDS: Final = tuple(_C[name] for name in ("response_id", "request_id", "batch_id", "custom_id"))
"""Ids a response (or the API's headers) gives: bounded (compactobs.untrusted.bounded_id). compactobs'
own spans carry them bounded already; this holds the store to it whoever made the span."""

_C_OUT_OF_RANGE = _C["out_of_range"]
_I_OUT_OF_RANGE = _I["out_of_range"]

_EPOCH = datetime(1970, 1, 1)
_STATUS = {StatusCode.UNSET: "UNSET", StatusCode.OK: "OK", StatusCode.ERROR: "ERROR"}


# --- values no column can hold ------------------------------------------------------------------------
# What SQLite and PostgreSQL can both store: 64-bit BIGINT, 32-bit INTEGER (SQLite's are 64-bit, but the
# two stores must agree), NUMERIC(20, 10) below 10^10, finite floats. A value beyond is cleared (NULL) and
# its column named in `out_of_range`, on either database, before the row is written.

_INT64: Final = 2**63 - 1
_INT32: Final = 2**31 - 1
_USD_MAX: Final = float(USD_LIMIT)


class _RangeCheck:
    """The columns of one table that share a bound, read in one C-level pass per row."""

    def __init__(self, table: Table, kind: type, limit: float, exact: bool) -> None:
        keys = {column.name for column in table.primary_key.columns}
        self.columns = [
            (i, column.name)
            for i, column in enumerate(table.columns)
            if column.name not in keys and type(column.type) is kind
        ]
        self.limit = limit
        self.exact = exact
        """Integers: compared with max/min (exact). Floats: their absolute values summed, which is NaN,
        infinite or beyond the limit whenever one of them is (a false alarm only costs the slow look)."""
        indexes = [i for i, _ in self.columns]
        # itemgetter of one index returns the value itself, not a tuple.
        self._get: Callable[[Row], Sequence[SQLValue]] = (
            operator.itemgetter(*indexes)
            if len(indexes) > 1
            else lambda row: row[indexes[0] : indexes[0] + 1]
        )

    def suspect(self, row: Row) -> bool:
        try:
            present = list(filter(None, self._get(row)))
            if not present:
                return False
            if self.exact:
                return max(present) > self.limit or min(present) < -self.limit
            return not sum(map(abs, present)) < self.limit
        except TypeError:  # a value of another type: the database decides, see sanitize
            return False

    def clear(self, row: Row) -> list[str]:
        """Clear the values that do not fit; returns their column names."""
        cleared = []
        for i, name in self.columns:
            value = row[i]
            if type(value) is int:
                bad = not -self.limit <= value <= self.limit
            elif type(value) is float:
                bad = not (math.isfinite(value) and (self.exact or abs(value) < self.limit))
                bad = bad or (self.exact and not -self.limit <= value <= self.limit)
            else:
                continue
            if bad:
                row[i] = None
                cleared.append(name)
        return cleared


def _range_checks(table: Table) -> tuple[_RangeCheck, ...]:
    keys = {column.name for column in table.primary_key.columns}
    kinds = {type(column.type) for column in table.columns if column.name not in keys}
    bounds = (
        (BigInteger, _INT64, True),
        (Integer, _INT32, True),
        (Numeric, _USD_MAX, False),
        (Float, math.inf, False),
    )
    return tuple(_RangeCheck(table, kind, limit, exact) for kind, limit, exact in bounds if kind in kinds)


_CALL_CHECKS: Final = _range_checks(calls)
_ITERATION_CHECKS: Final = _range_checks(iterations)


def _quick_look(checks: tuple[_RangeCheck, ...]) -> Callable[[Row], Sequence[SQLValue]]:
    """One C-level read of every checked column but the span times (which always fit)."""
    indexes = sorted(
        {i for check in checks for i, name in check.columns if name not in ("start_ms", "end_ms")}
    )
    return operator.itemgetter(*indexes)


_CALL_LOOK: Final = _quick_look(_CALL_CHECKS)
_ITERATION_LOOK: Final = _quick_look(_ITERATION_CHECKS)


def _clear_out_of_range(
    row: Row, checks: tuple[_RangeCheck, ...], flag: int, look: Callable[[Row], Sequence[SQLValue]]
) -> None:
    # The common case in one pass: every value within the narrowest bound (INTEGER's, which every other
    # column holds too) and none NaN (a NaN makes the sum NaN). Else each column group looks exactly.
    try:
        present = list(filter(None, look(row)))
        if not present:
            return
        total = sum(present)
        if total == total and max(present) <= _INT32 and min(present) >= -_INT32:
            return
    except TypeError:
        pass
    cleared: list[str] = []
    for check in checks:
        if check.suspect(row):
            cleared += check.clear(row)
    if cleared:
        row[flag] = ",".join(cleared)


class RowMapper:
    """Maps span batches to `calls` and `iterations` rows for one backend ("sqlite" or "postgresql")."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._zone = "" if backend == "sqlite" else "+00:00"
        # A provider's spans share one Resource object: remember the last one's service.name (one tuple,
        # so a concurrent export never pairs one resource with another's name).
        self._last_resource: tuple[object, str | None] = (object(), None)
        self._last_second: tuple[int, str] = (-1, "")

    def _service_name(self, span: ReadableSpan) -> str | None:
        resource = span.resource
        last, name = self._last_resource
        if resource is last:
            return name
        value = resource.attributes.get("service.name") if resource is not None else None
        name = value if isinstance(value, str) else None
        self._last_resource = (resource, name)
        return name

    def map(self, spans: Sequence[ReadableSpan]) -> tuple[list[Row], list[Row]]:
        """(calls, iterations) rows of the compactobs spans in `spans`; every other span is skipped.

        An iteration span without a parent or an integer index cannot be keyed, so it is skipped too.
        """
        call_rows: list[Row] = []
        iteration_rows: list[Row] = []
        scope_name = t.INSTRUMENTATION_SCOPE
        span_kind, call_kind, iteration_kind = t.SPAN_KIND, t.SPAN_KIND_CALL, t.SPAN_KIND_ITERATION
        for span in spans:
            scope = span.instrumentation_scope
            if scope is None or scope.name != scope_name:
                continue
            # One C-level copy, then C-level lookups: the span's mapping (a MappingProxyType, never None on
            # an SDK span) proxies a Python class, whose every lookup is a Python call.
            attributes = span.attributes.copy()  # type: ignore[union-attr]
            get = attributes.get
            kind = get(span_kind)
            if kind == call_kind:
                row = list(map(get, _CALL_KEYS))
                self._call(span, row)
                row[_C_TAGS] = tags_json(attributes)
                for i in _C_IDS:
                    value = row[i]
                    if type(value) is str and len(value) > MAX_ID_CHARS:
                        row[i] = bounded_id(value)
                _clear_out_of_range(row, _CALL_CHECKS, _C_OUT_OF_RANGE, _CALL_LOOK)
                call_rows.append(row)
            elif kind == iteration_kind:
                row = list(map(get, _ITERATION_KEYS))
                parent = span.parent
                if parent is None or type(row[_I_IDX]) is not int:
                    continue
                row[_I_CALL_ID] = format(parent.span_id, "016x")
                row[_I_START_MS] = (span.start_time or 0) // 1_000_000
                _clear_out_of_range(row, _ITERATION_CHECKS, _I_OUT_OF_RANGE, _ITERATION_LOOK)
                iteration_rows.append(row)
        return call_rows, iteration_rows

    def _timestamp(self, ns: int) -> str:
        # Calls in a batch mostly share their second: format it once (formatting is the costliest step here).
        second, micros = divmod(ns // 1000, 1_000_000)
        last_second, prefix = self._last_second
        if second != last_second:
            prefix = (_EPOCH + timedelta(seconds=second)).isoformat(" ")
            self._last_second = (second, prefix)
        return f"{prefix}.{micros:06d}{self._zone}"

    def _call(self, span: ReadableSpan, row: Row) -> None:
        context = span.context
        assert context is not None  # every SDK span has one
        start = span.start_time or 0
        end = span.end_time or start
        row[_C_CALL_ID] = format(context.span_id, "016x")
        row[_C_TRACE_ID] = format(context.trace_id, "032x")
        row[_C_SERVICE] = self._service_name(span)
        row[_C_START_TIME] = self._timestamp(start)
        row[_C_START_MS] = start // 1_000_000
        row[_C_END_MS] = end // 1_000_000
        row[_C_DURATION] = (end - start) / 1e6
        row[_C_STATUS] = _STATUS.get(span.status.status_code, "UNSET")
        resend = row[_C_ATTEMPTS]
        # No resend count on the span still means the request went out once.
        row[_C_ATTEMPTS] = resend + 1 if type(resend) is int else 1
        ttft = row[_C_TTFT]
        row[_C_TTFT] = ttft * 1000.0 if type(ttft) is float or type(ttft) is int else None


_TAG_PREFIX: Final = t.TAG_PREFIX
_TAG_CUT: Final = len(t.TAG_PREFIX)
_TAG_MARK: Final = "\x00" + t.TAG_PREFIX
_TAGS_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def tags_json(attributes: Mapping[str, object]) -> str | None:
    """The `tags` column of a call span's attributes: its `compactobs.tag.*` as a JSON object, bounded as
    `compactobs.untrusted.bounded_tags` says whoever sent the span; None when it has none."""
    # Most calls carry no tag: one C-level look at all the names first (a name holding NUL could pass it,
    # and is then left out below).
    if _TAG_MARK not in "\x00" + "\x00".join(attributes):
        return None
    prefix = _TAG_PREFIX
    found = [(key[_TAG_CUT:], value) for key, value in attributes.items() if key.startswith(prefix)]
    if not found:
        return None
    tags = bounded_tags(found)
    return _TAGS_ENCODER.encode(tags) if tags else None


# --- the slow path: coercing values a database refused -------------------------------------------------


def _as_str(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    # PostgreSQL text cannot hold NUL.
    return str(value).replace("\x00", "")


def _as_int(value: object) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_float(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _as_bool(value: object) -> bool | None:
    return value if type(value) is bool else None


def _coercer(column_type: object) -> Callable[[object], object]:
    if isinstance(column_type, Boolean):
        return _as_bool
    if isinstance(column_type, Integer):
        return _as_int
    if isinstance(column_type, (Float, Numeric)):
        return _as_float
    if isinstance(column_type, String):
        return _as_str
    return lambda value: value


_COERCERS: Final = {
    table.name: [_coercer(column.type) for column in table.columns] for table in (calls, iterations)
}


def sanitize(rows: list[Row], table: Table) -> list[Row]:
    """Rows with every value coerced to its column's type (None where it cannot be): for a batch the
    database refused. Computed columns (ids, times) are already right and pass unchanged."""
    coercers = _COERCERS[table.name]
    return [[coerce(value) for coerce, value in zip(coercers, row, strict=True)] for row in rows]


def group_by_call(call_rows: list[Row], iteration_rows: list[Row]) -> list[tuple[list[Row], list[Row]]]:
    """The rows as (call, its iterations) groups, in the calls' order; iterations whose call is not among
    the rows form groups of their own, by call id."""
    groups: dict[str, tuple[list[Row], list[Row]]] = {}
    for row in call_rows:
        groups.setdefault(row[_C_CALL_ID], ([], []))[0].append(row)
    for row in iteration_rows:
        groups.setdefault(row[_I_CALL_ID], ([], []))[1].append(row)
    return list(groups.values())
