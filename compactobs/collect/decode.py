"""Decode OTLP export requests (protobuf or JSON) into SDK spans and plain log records.

OTLP/JSON differs from protobuf's canonical JSON mapping in one way that matters here: trace and span ids
are hex strings, not base64 (OTLP specification, "JSON Protobuf Encoding"). They are turned into base64
before protobuf's parser reads the document; unknown fields are ignored, as the specification asks of
receivers.

Trace requests are read by `wire` (the attributes decoded by hand, for speed). A span becomes an
`opentelemetry.sdk.trace.ReadableSpan` carrying its resource, scope, ids, parent, times,
status and attributes: what the store's row mapper reads from a span ended in this process.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status as StatusProto
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from compactobs.collect import wire
from compactobs.collect.wire import any_value
from compactobs.errors import CompactobsError

__all__ = [
    "DecodeFailure",
    "LogRecord",
    "SpanBatch",
    "attributes_of",
    "log_records",
    "parse",
    "parse_traces",
    "spans",
]

M = TypeVar("M", bound=Message)

_ID_KEYS: Final = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_KINDS: Final = {
    SpanProto.SPAN_KIND_INTERNAL: SpanKind.INTERNAL,
    SpanProto.SPAN_KIND_SERVER: SpanKind.SERVER,
    SpanProto.SPAN_KIND_CLIENT: SpanKind.CLIENT,
    SpanProto.SPAN_KIND_PRODUCER: SpanKind.PRODUCER,
    SpanProto.SPAN_KIND_CONSUMER: SpanKind.CONSUMER,
}
_STATUS: Final = {
    StatusProto.STATUS_CODE_OK: StatusCode.OK,
    StatusProto.STATUS_CODE_ERROR: StatusCode.ERROR,
}
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)


class DecodeFailure(CompactobsError, ValueError):
    """The body is not an OTLP request of the expected kind. One line, safe to send back."""


REQUEST_TYPES: Final[dict[str, type[Message]]] = {
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}


def _hex_ids_to_base64(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                try:
                    value = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError:
                    raise DecodeFailure(f"{key} is not hex: OTLP/JSON ids are hex strings") from None
            else:
                value = _hex_ids_to_base64(value)
            out[key] = value
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    return node


def parse(body: bytes, message_type: type[M], *, json_body: bool) -> M:
    """The request in `body`, protobuf or OTLP/JSON. Raises DecodeFailure."""
    message = message_type()
    try:
        if json_body:
            document = json.loads(body)
            if not isinstance(document, dict):
                raise DecodeFailure("the JSON body is not an object")
            json_format.ParseDict(_hex_ids_to_base64(document), message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(body)
    except DecodeFailure:
        raise
    except (ValueError, DecodeError, json_format.ParseError, RecursionError, binascii.Error) as err:
        kind = "JSON" if json_body else "protobuf"
        raise DecodeFailure(f"not an OTLP {message_type.__name__} in {kind}: {str(err)[:200]}") from None
    return message


_SCALARS: Final = frozenset({"string_value", "bool_value", "int_value", "double_value"})


def attributes_of(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """Key-value pairs as a dict; values that are empty (no value set) are left out."""
    out: dict[str, Any] = {}
    scalars = _SCALARS
    for kv in pairs:
        value = kv.value
        kind = value.WhichOneof("value")
        # Scalars (nearly every attribute) read directly: this loop is most of a request's decoding.
        if kind in scalars:
            out[kv.key] = getattr(value, kind)
        elif kind is not None:
            out[kv.key] = any_value(value)
    return out


@dataclass
class SpanBatch:
    spans: list[ReadableSpan] = field(default_factory=list)
    rejected: int = 0
    """Spans that cannot be kept: malformed ids or attributes."""
    reasons: list[str] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if reason not in self.reasons:
            self.reasons.append(reason)


BAD_IDS: Final = "spans with a trace id other than 16 bytes or a span id other than 8"
BAD_ATTRIBUTES: Final = "spans with attributes that are not protobuf"


def parse_traces(body: bytes, *, json_body: bool) -> Message:
    """A trace request as `wire` reads it (protobuf or OTLP/JSON). Raises DecodeFailure."""
    if json_body:
        # JSON is read by protobuf's parser into the OTLP message, then handed over as protobuf.
        body = parse(body, ExportTraceServiceRequest, json_body=True).SerializeToString()
    try:
        return wire.trace_request(body)
    except (DecodeError, ValueError) as err:
        raise DecodeFailure(f"not an OTLP ExportTraceServiceRequest in protobuf: {str(err)[:200]}") from None


def spans(request: Message) -> SpanBatch:
    """Every span of a request `parse_traces` read, as a ReadableSpan, and a count of those that cannot be
    (bad ids, attributes that are not protobuf)."""
    batch = SpanBatch()
    for resource_spans in request.resource_spans:
        try:
            resource = Resource(wire.attributes(resource_spans.resource.attributes))
        except wire.Unreadable:
            for scope_spans in resource_spans.scope_spans:
                for _ in scope_spans.spans:
                    batch.reject(BAD_ATTRIBUTES)
            continue
        for scope_spans in resource_spans.scope_spans:
            scope = InstrumentationScope(
                scope_spans.scope.name, scope_spans.scope.version or None, scope_spans.schema_url or None
            )
            for proto in scope_spans.spans:
                try:
                    span = _span(proto, resource, scope)
                except wire.Unreadable:
                    batch.reject(BAD_ATTRIBUTES)
                    continue
                if span is None:
                    batch.reject(BAD_IDS)
                else:
                    batch.spans.append(span)
    return batch


def _span(proto: Any, resource: Resource, scope: InstrumentationScope) -> ReadableSpan | None:
    trace_bytes, span_bytes, parent_bytes = proto.trace_id, proto.span_id, proto.parent_span_id
    if len(trace_bytes) != 16 or len(span_bytes) != 8 or len(parent_bytes) not in (0, 8):
        return None
    trace_id = int.from_bytes(trace_bytes, "big")
    span_id = int.from_bytes(span_bytes, "big")
    if not trace_id or not span_id:
        return None
    context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)
    parent = None
    if parent_bytes:
        parent_id = int.from_bytes(parent_bytes, "big")
        parent = SpanContext(trace_id, parent_id, is_remote=True, trace_flags=_SAMPLED) if parent_id else None
    status_proto = proto.status
    status = Status(_STATUS.get(status_proto.code, StatusCode.UNSET), status_proto.message or None)
    return ReadableSpan(
        name=proto.name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=wire.attributes(proto.attributes),
        kind=_KINDS.get(proto.kind, SpanKind.INTERNAL),
        status=status,
        start_time=proto.start_time_unix_nano or None,
        end_time=proto.end_time_unix_nano or None,
        instrumentation_scope=scope,
    )


@dataclass(frozen=True)
class LogRecord:
    """One log record with its resource's and scope's context, as plain values."""

    resource: dict[str, Any]
    scope: str
    time_unix_nano: int
    event_name: str
    body: Any
    attributes: dict[str, Any]


def log_records(request: ExportLogsServiceRequest) -> list[LogRecord]:
    """Every log record of the request. The event's name is the record's `event_name`, else its
    `event.name` attribute (older SDKs), else its body when that is a string."""
    out: list[LogRecord] = []
    for resource_logs in request.resource_logs:
        resource = attributes_of(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attributes = attributes_of(record.attributes)
                body = any_value(record.body)
                name = (
                    record.event_name
                    or attributes.get("event.name")
                    or (body if isinstance(body, str) else "")
                )
                out.append(
                    LogRecord(
                        resource=resource,
                        scope=scope_logs.scope.name,
                        time_unix_nano=record.time_unix_nano or record.observed_time_unix_nano,
                        event_name=str(name),
                        body=body,
                        attributes=attributes,
                    )
                )
    return out
