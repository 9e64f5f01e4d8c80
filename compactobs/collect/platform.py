"""Server-side telemetry: the spans the Claude API itself exports (a "telemetry destination" in the Claude
Console, beta `telemetry-destinations-2026-08-11`), kept as the requests that reached Anthropic.

What Anthropic's OpenTelemetry span reference says (platform.claude.com/docs/en/api/opentelemetry/spans,
beta: names and attributes can change):
- API spans have `service.name` `claude-platform` and the instrumentation scope
  `com.anthropic.claude-platform`; a request's span is of kind SERVER and named after its API method
  (`anthropic.messages.create`), a tool use's is INTERNAL and named `anthropic.tool_use <tool>`;
- attributes follow the GenAI semantic conventions (`gen_ai.*`), Anthropic's own start with `anthropic.`;
- the Claude SDK sends a `traceparent` with each request and the API's spans join that trace, under the
  client's span.

What could not be verified there: the name of the attribute that carries the request id. It is read from
`anthropic.request.id`, then `anthropic.request_id`; the message id from `gen_ai.response.id`; tokens from
`gen_ai.usage.*` (input, output, `cache_read.input_tokens`, `cache_creation.input_tokens`).

Each request span becomes a row of `api_requests` (never of `calls`: a client may have recorded the same
request, with its cost, and the two would count it twice). Tool spans and other API spans are read and
not kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from compactobs._types import JSON, JSONObject
from compactobs.untrusted import bounded_id

__all__ = ["NOT_KEPT", "REQUEST_ID_KEYS", "SCOPE", "SERVICE", "is_platform", "request_rows"]

SERVICE: Final = "claude-platform"
SCOPE: Final = "com.anthropic.claude-platform"
REQUEST_ID_KEYS: Final = ("anthropic.request.id", "anthropic.request_id")
"""Where the request id is looked for, in order (the reference names no attribute for it)."""
NOT_KEPT: Final = "server-side telemetry: only request spans (kind SERVER) are kept, as api_requests"

_STATUS: Final = {StatusCode.UNSET: "UNSET", StatusCode.OK: "OK", StatusCode.ERROR: "ERROR"}
_TOKENS: Final = {
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "cache_read_tokens": "gen_ai.usage.cache_read.input_tokens",
    "cache_write_tokens": "gen_ai.usage.cache_creation.input_tokens",
}
_INT64: Final = 2**63 - 1


def is_platform(span: ReadableSpan) -> bool:
    """A span the Claude API exported (by its scope, or by its resource's service.name)."""
    scope = span.instrumentation_scope
    if scope is not None and scope.name == SCOPE:
        return True
    resource = span.resource
    return resource is not None and resource.attributes.get("service.name") == SERVICE


def _text(value: JSON) -> str | None:
    return bounded_id(value) if isinstance(value, str) and value else None


def _count(value: JSON) -> int | None:
    return value if type(value) is int and 0 <= value <= _INT64 else None


def request_rows(spans: Sequence[ReadableSpan]) -> tuple[list[JSONObject], int]:
    """(rows of `api_requests`, spans not kept) for the platform's spans."""
    rows: list[JSONObject] = []
    for span in spans:
        context = span.context
        if span.kind is not SpanKind.SERVER or context is None or not span.start_time:
            continue
        attributes = span.attributes or {}
        request_id = next(
            (value for key in REQUEST_ID_KEYS if (value := _text(attributes.get(key))) is not None), None
        )
        model = _text(attributes.get("gen_ai.response.model")) or _text(
            attributes.get("gen_ai.request.model")
        )
        row: JSONObject = {
            "trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x"),
            "parent_span_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
            "name": _text(span.name),
            "request_id": request_id,
            "response_id": _text(attributes.get("gen_ai.response.id")),
            "model": model,
            "start_ms": span.start_time // 1_000_000,
            "end_ms": span.end_time // 1_000_000 if span.end_time else None,
            "status": _STATUS.get(span.status.status_code, "UNSET"),
        }
        for column, key in _TOKENS.items():
            row[column] = _count(attributes.get(key))
        rows.append(row)
    return rows, len(spans) - len(rows)
