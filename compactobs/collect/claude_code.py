"""Claude Code's OpenTelemetry log events as compactobs calls, recorded by compactobs' own recorder.

Claude Code (`CLAUDE_CODE_ENABLE_TELEMETRY=1`, `OTEL_LOGS_EXPORTER=otlp`) sends one `api_request` event per
API call, with its model, token counts by class, `request_id`, `session.id`, `query_source` and its own
`cost_usd`; `api_error` for a call that failed. Each becomes a `CallObservation`, which the same
`Telemetry` recorder as in-process recording prices (genai-prices, the overrides file) and turns into call
and iteration spans; those go to the store through the collector. So a Claude Code call is priced by the
same rules as an application's.

- service `claude-code` (the event's resource names it), conversation = `session.id`;
- a `query_source=compact` call (Claude Code summarising its context) is billed as one `compaction`
  iteration, so compaction spend and `report anomalies` count it like a server-side compaction;
- ids: derived from the request id (else the session and the event's sequence number), so an event sent
  twice, or a call both collected and imported from a transcript (`call_key`), is stored once;
- no text: prompts and responses are never read from the events, even when Claude Code sends them.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

from compactobs.collect.decode import LogRecord
from compactobs.pricing.pricer import Pricer, default_pricer
from compactobs.recorder import Telemetry
from compactobs.usage import CallObservation, RequestFacts, normalise_usage

__all__ = ["SERVICE", "CallRecorder", "ClaudeCodeEvents", "call_key", "event_kind"]

SERVICE: Final = "claude-code"
SCOPE: Final = "com.anthropic.claude_code.events"
API_REQUEST: Final = "api_request"
API_ERROR: Final = "api_error"
COMPACT_SOURCE: Final = "compact"


def event_kind(record: LogRecord) -> str | None:
    """`api_request`, `api_error` or another Claude Code event's name; None for another program's record."""
    name = record.event_name.removeprefix("claude_code.")
    if record.scope == SCOPE or record.resource.get("service.name") == SERVICE or record.event_name != name:
        return name
    return None


def call_key(request_id: str | None, session_id: str | None, sequence: object) -> str:
    """The key all of a call's span ids derive from: the API's request id when there is one."""
    if request_id:
        return f"request\x00{request_id}"
    return f"event\x00{session_id}\x00{sequence}"


def _digest(key: str, part: int) -> tuple[int, int]:
    digest = hashlib.blake2b(f"claude-code\x00{key}\x00{part}".encode(), digest_size=24).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:], "big") or 1


class _KeyedIds(IdGenerator):
    """Ids from a key set for the thread: the call span's trace and span id, then one span id per iteration,
    in the order the recorder starts them. Without a key: random."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._random = RandomIdGenerator()

    def key(self, key: str | None) -> None:
        self._local.key, self._local.part = key, 0

    def generate_trace_id(self) -> int:
        key = getattr(self._local, "key", None)
        return _digest(key, 0)[0] if key is not None else self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        key = getattr(self._local, "key", None)
        if key is None:
            return self._random.generate_span_id()
        part = self._local.part
        self._local.part = part + 1
        return _digest(key, part)[1]


class _Capture(SpanProcessor):
    """Keeps the spans ended on this thread, for the collector to store as one batch."""

    def __init__(self) -> None:
        self._local = threading.local()

    def start(self) -> None:
        self._local.spans = []

    def take(self) -> list[ReadableSpan]:
        spans: list[ReadableSpan] = self._local.spans
        self._local.spans = []
        return spans

    def on_end(self, span: ReadableSpan) -> None:
        self._local.spans.append(span)


def _int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float, as JSON may carry
        return 0
    return max(number, 0)


def _time_ns(record: LogRecord) -> int:
    stamp = record.attributes.get("event.timestamp")
    if isinstance(stamp, str):
        try:
            return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1_000_000) * 1000
        except ValueError:
            pass
    return record.time_unix_nano


class CallRecorder:
    """Observations to call and iteration spans through compactobs' own recorder and pricer (default: the
    overrides file named by COMPACTOBS_PRICING_FILE over genai-prices), each call's ids derived from its
    key (`call_key`). Thread-safe. Shared by `collect` and `import claude-code`, so a call both paths see
    gets the same span ids, and the store keeps it once."""

    def __init__(self, pricer: Pricer | None = None) -> None:
        self._ids = _KeyedIds()
        self._capture = _Capture()
        provider = TracerProvider(resource=Resource({"service.name": SERVICE}), id_generator=self._ids)
        provider.add_span_processor(self._capture)
        self._telemetry = Telemetry(provider, metrics.NoOpMeterProvider(), pricer or default_pricer())
        self._telemetry.close()  # record on the calling thread: the spans are wanted now, not later

    def spans(self, calls: Iterable[tuple[str, CallObservation]]) -> list[ReadableSpan]:
        """The spans of each (key, observation), in order."""
        self._capture.start()
        for key, observation in calls:
            self._ids.key(key)
            try:
                self._telemetry.record(observation, None, False)
            finally:
                self._ids.key(None)
        return self._capture.take()


class ClaudeCodeEvents:
    """Turns Claude Code's events into compactobs' spans (see the module). Thread-safe."""

    def __init__(self, pricer: Pricer | None = None) -> None:
        self._recorder = CallRecorder(pricer)

    def spans(self, records: Sequence[LogRecord]) -> tuple[list[ReadableSpan], int, int]:
        """(spans, calls, records not kept): the call and iteration spans of the records' API calls. Other
        Claude Code events (prompts, tool results...) and other records are not kept."""
        calls: list[tuple[str, CallObservation]] = []
        for record in records:
            kind = event_kind(record)
            if kind not in (API_REQUEST, API_ERROR):
                continue
            observation = self.observation(record, kind)
            attributes = record.attributes
            key = call_key(
                observation.request_id, attributes.get("session.id"), attributes.get("event.sequence")
            )
            calls.append((key, observation))
        return self._recorder.spans(calls), len(calls), len(records) - len(calls)

    @staticmethod
    def observation(record: LogRecord, kind: str) -> CallObservation:
        """The call an `api_request` or `api_error` event describes. Reads counts and ids only."""
        attributes = record.attributes
        model = attributes.get("model")
        model = model if isinstance(model, str) and model else None
        end_ns = _time_ns(record)
        duration_ms = _int(attributes.get("duration_ms"))
        request_id = attributes.get("request_id")
        session = attributes.get("session.id")
        observation = CallObservation(
            request=RequestFacts(model=model),
            start_ns=max(end_ns - duration_ms * 1_000_000, 0),
            end_ns=end_ns,
            request_id=request_id if isinstance(request_id, str) and request_id else None,
            response_model=model,
            conversation_id=session if isinstance(session, str) and session else None,
            provider="anthropic",
        )
        if kind == API_ERROR:
            status = attributes.get("status_code")
            observation.status_code = _int(status) or None
            error = attributes.get("error")
            observation.error_type = (
                str(status)
                if status not in (None, "", "undefined")
                else ("claude_code_api_error" if not isinstance(error, str) else error[:100])
            )
            observation.attempts = max(_int(attributes.get("attempt")), 1)
            return observation
        tokens = {
            "input_tokens": _int(attributes.get("input_tokens")),
            "output_tokens": _int(attributes.get("output_tokens")),
            "cache_read_input_tokens": _int(attributes.get("cache_read_tokens")),
            "cache_creation_input_tokens": _int(attributes.get("cache_creation_tokens")),
        }
        usage: dict[str, Any] = dict(tokens)
        if attributes.get("query_source") == COMPACT_SOURCE:
            # Claude Code's own compaction: the whole call is compaction spend.
            usage = {"input_tokens": 0, "output_tokens": 0, "iterations": [{"type": "compaction", **tokens}]}
        if attributes.get("speed") == "fast":
            usage["speed"] = "fast"
        observation.usage = normalise_usage(usage, model)
        cost = attributes.get("cost_usd")
        if isinstance(cost, (int, float)) and not isinstance(cost, bool):
            observation.source_cost_usd = float(cost)
        observation.status_code = 200
        return observation
