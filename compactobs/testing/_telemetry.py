"""Server-side telemetry as the Claude API exports it to a telemetry destination: a span per Messages request
the simulator served, in the shape Anthropic's OpenTelemetry span reference documents (see
compactobs.collect.platform for what it says and what it does not).

- resource `service.name` = `claude-platform`, scope `com.anthropic.claude-platform`;
- per request, a SERVER span `anthropic.messages.create`, in the trace of the request's `traceparent`
  (under the client's span) when it sent one, else in a trace of its own; status OK;
- per server tool the reply used (`server_tool_use` blocks), an INTERNAL span `anthropic.tool_use <name>`
  under it;
- attributes: `gen_ai.provider.name` (anthropic), `gen_ai.operation.name` (chat), `gen_ai.request.model`,
  `gen_ai.response.model`, `gen_ai.response.id`, the request id under `request_id_key`, and
  `gen_ai.usage.*`: `input_tokens` as the GenAI conventions count it for Anthropic (uncached + cache read +
  cache write), `output_tokens`, `cache_read.input_tokens`, `cache_creation.input_tokens`.

```python
with Simulator() as sim:
    ...  # requests
    status = sim.telemetry.send(collector.endpoint)   # POST /v1/traces, protobuf, as the API would
```
"""

from __future__ import annotations

import hashlib
import http.client
import re
import threading
from dataclasses import dataclass
from typing import Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from compactobs._types import JSON, JSONObject

__all__ = ["PlatformTelemetry", "ServedRequest"]

SERVICE: Final = "claude-platform"
SCOPE: Final = "com.anthropic.claude-platform"
_TRACEPARENT: Final = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


@dataclass(frozen=True)
class ServedRequest:
    request_id: str
    body: JSONObject
    """The reply's message."""
    start_ns: int
    end_ns: int
    traceparent: str | None


def _value(value: JSON) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def _attributes(values: JSONObject) -> list[KeyValue]:
    return [KeyValue(key=key, value=_value(value)) for key, value in values.items() if value is not None]


def _id(seed: str, size: int) -> bytes:
    return hashlib.sha256(seed.encode()).digest()[:size]


class PlatformTelemetry:
    """What the simulator served, as the spans the API would export (see the module). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._served: list[ServedRequest] = []

    def record(
        self, body: JSON, request_id: str, headers: dict[str, str], start_ns: int, end_ns: int
    ) -> None:
        if not isinstance(body, dict):
            return
        served = ServedRequest(request_id, body, start_ns, end_ns, headers.get("traceparent"))
        with self._lock:
            self._served.append(served)

    @property
    def served(self) -> list[ServedRequest]:
        with self._lock:
            return list(self._served)

    def clear(self) -> None:
        with self._lock:
            self._served.clear()

    def request(self, *, request_id_key: str = "anthropic.request.id") -> ExportTraceServiceRequest:
        """One OTLP export request holding the spans of every request served so far."""
        spans: list[Span] = []
        for served in self.served:
            spans += self._spans(served, request_id_key)
        return ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource=Resource(attributes=_attributes({"service.name": SERVICE})),
                    scope_spans=[ScopeSpans(scope=InstrumentationScope(name=SCOPE), spans=spans)],
                )
            ]
        )

    def send(
        self, endpoint: str, *, token: str | None = None, request_id_key: str = "anthropic.request.id"
    ) -> int:
        """POST the spans to `endpoint` + /v1/traces (OTLP/HTTP, protobuf) as a destination receives them;
        returns the HTTP status."""
        host, port = endpoint.removeprefix("http://").rsplit(":", 1)
        headers = {"Content-Type": "application/x-protobuf"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            body = self.request(request_id_key=request_id_key).SerializeToString()
            connection.request("POST", "/v1/traces", body, headers)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    @staticmethod
    def _spans(served: ServedRequest, request_id_key: str) -> list[Span]:
        body = served.body
        parent = _TRACEPARENT.match(served.traceparent or "")
        trace_id = bytes.fromhex(parent.group(1)) if parent else _id(f"trace {served.request_id}", 16)
        parent_id = bytes.fromhex(parent.group(2)) if parent else b""
        span_id = _id(f"span {served.request_id}", 8)
        usage: JSONObject = body["usage"] if isinstance(body.get("usage"), dict) else {}
        uncached = int(usage.get("input_tokens") or 0)
        read = int(usage.get("cache_read_input_tokens") or 0)
        written = int(usage.get("cache_creation_input_tokens") or 0)
        model = body.get("model")
        attributes = {
            "gen_ai.provider.name": "anthropic",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "gen_ai.response.id": body.get("id"),
            request_id_key: served.request_id,
            "gen_ai.usage.input_tokens": uncached + read + written,
            "gen_ai.usage.output_tokens": int(usage.get("output_tokens") or 0),
            "gen_ai.usage.cache_read.input_tokens": read,
            "gen_ai.usage.cache_creation.input_tokens": written,
        }
        ok = Status(code=Status.STATUS_CODE_OK)
        spans = [
            Span(
                trace_id=trace_id,
                span_id=span_id,
                parent_span_id=parent_id,
                name="anthropic.messages.create",
                kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=served.start_ns,
                end_time_unix_nano=served.end_ns,
                attributes=_attributes(attributes),
                status=ok,
            )
        ]
        content: list[JSON] = body["content"] if isinstance(body.get("content"), list) else []
        for i, block in enumerate(content):
            if isinstance(block, dict) and block.get("type") == "server_tool_use":
                spans.append(
                    Span(
                        trace_id=trace_id,
                        span_id=_id(f"tool {served.request_id} {i}", 8),
                        parent_span_id=span_id,
                        name=f"anthropic.tool_use {block.get('name')}",
                        kind=Span.SPAN_KIND_INTERNAL,
                        start_time_unix_nano=served.start_ns,
                        end_time_unix_nano=served.end_ns,
                        attributes=_attributes({"gen_ai.provider.name": "anthropic"}),
                        status=ok,
                    )
                )
        return spans
