"""compactobs' finished spans written into an `otel_traces` table as the Collector's ClickHouse exporter
writes them, for the tests of the ClickHouse source.

The mapping followed is the exporter's (opentelemetry-collector-contrib, exporter/clickhouseexporter:
`exporter_traces.go` `pushTraceData` and the table in `internal/sql_templates/traces_table.sql`):
`Timestamp` the span's start, `TraceId`/`SpanId`/`ParentSpanId` in hex (empty without a parent),
`SpanKind` and `StatusCode` as `traceutil.SpanKindStr`/`StatusCodeStr` spell them (`SPAN_KIND_CLIENT`,
`STATUS_CODE_ERROR`), `ServiceName` the resource's service.name, `ScopeName`/`ScopeVersion` the
instrumentation scope, `Duration` end - start in nanoseconds, and every attribute value as pdata's
`Value.AsString()` gives it: strings as they are, booleans `true`/`false`, integers in decimal, doubles in
their shortest round-trip digits, in fixed notation from 1e-6 to 1e21 and with an exponent outside
(`1e-7`, `1e+21`, as ES6 prints numbers), arrays as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from compactobs.reports.sources.clickhouse.client import quote
from compactobs.reports.sources.clickhouse.ddl import otel_traces_ddl
from compactobs.reports.sources.clickhouse.source import ClickHouseSource

_KIND = {
    SpanKind.INTERNAL: "SPAN_KIND_INTERNAL",
    SpanKind.SERVER: "SPAN_KIND_SERVER",
    SpanKind.CLIENT: "SPAN_KIND_CLIENT",
    SpanKind.PRODUCER: "SPAN_KIND_PRODUCER",
    SpanKind.CONSUMER: "SPAN_KIND_CONSUMER",
}
_STATUS = {
    StatusCode.UNSET: "STATUS_CODE_UNSET",
    StatusCode.OK: "STATUS_CODE_OK",
    StatusCode.ERROR: "STATUS_CODE_ERROR",
}


def double_text(value: float) -> str:
    """A double as pdata's AsString writes it (ES6 number to string)."""
    if value == 0:
        return "0"
    exact = Decimal(repr(value)).normalize()
    if 1e-6 <= abs(value) < 1e21:
        return format(exact, "f")
    sign, digits, exponent = exact.as_tuple()
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    power = int(exponent) + len(digits) - 1
    return f"{'-' if sign else ''}{mantissa}e{'+' if power >= 0 else '-'}{abs(power)}"


def as_string(value: Any) -> str:
    """An attribute value as the exporter stores it in a Map(String, String)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return double_text(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), separators=(",", ":"))
    return str(value)


def _map(attributes: Any) -> str:
    items = [f"{quote(str(k))}, {quote(as_string(v))}" for k, v in dict(attributes or {}).items()]
    return f"map({', '.join(items)})" if items else "map()"


def _ns(value: int) -> str:
    return f"fromUnixTimestamp64Nano(toInt64({int(value)}))"


def row_values(span: ReadableSpan) -> str:
    """One span as a VALUES tuple in the column order of `COLUMNS`."""
    context = span.context
    assert context is not None
    start = span.start_time or 0
    end = span.end_time or start
    parent = format(span.parent.span_id, "016x") if span.parent is not None else ""
    resource = span.resource.attributes if span.resource is not None else {}
    scope = span.instrumentation_scope
    events = list(span.events)
    links = list(span.links)
    values = [
        _ns(start),
        quote(format(context.trace_id, "032x")),
        quote(format(context.span_id, "016x")),
        quote(parent),
        quote(""),
        quote(span.name),
        quote(_KIND.get(span.kind, "SPAN_KIND_UNSPECIFIED")),
        quote(str(resource.get("service.name", ""))),
        _map(resource),
        quote(scope.name if scope is not None else ""),
        quote((scope.version or "") if scope is not None else ""),
        _map(span.attributes),
        str(end - start),
        quote(_STATUS[span.status.status_code]),
        quote(span.status.description or ""),
        "[" + ", ".join(_ns(e.timestamp) for e in events) + "]",
        "[" + ", ".join(quote(e.name) for e in events) + "]",
        "[" + ", ".join(_map(e.attributes) for e in events) + "]",
        "[" + ", ".join(quote(format(link.context.trace_id, "032x")) for link in links) + "]",
        "[" + ", ".join(quote(format(link.context.span_id, "016x")) for link in links) + "]",
        "[" + ", ".join(quote("") for _ in links) + "]",
        "[" + ", ".join(_map(link.attributes) for link in links) + "]",
    ]
    return "(" + ", ".join(values) + ")"


COLUMNS: Sequence[str] = (
    "Timestamp", "TraceId", "SpanId", "ParentSpanId", "TraceState", "SpanName", "SpanKind", "ServiceName",
    "ResourceAttributes", "ScopeName", "ScopeVersion", "SpanAttributes", "Duration", "StatusCode",
    "StatusMessage", "Events.Timestamp", "Events.Name", "Events.Attributes", "Links.TraceId",
    "Links.SpanId", "Links.TraceState", "Links.Attributes",
)  # fmt: skip


def write_spans(source: ClickHouseSource, spans: Iterable[ReadableSpan], table: str = "otel_traces") -> int:
    """Create the exporter's table when missing and insert the spans, as the exporter would. Returns the
    number of spans written."""
    source.execute(otel_traces_ddl(table))
    batch = [row_values(span) for span in spans]
    for start in range(0, len(batch), 500):
        chunk = batch[start : start + 500]
        source.execute(
            f"INSERT INTO {table} ({', '.join(f'`{c}`' for c in COLUMNS)}) VALUES {', '.join(chunk)}"
        )
    return len(batch)
