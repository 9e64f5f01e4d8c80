"""Replay stored calls as OpenTelemetry spans through an official exporter (`compactobs export otlp`).

```python
exporter = compactobs.otlp.span_exporter("grpc", endpoint="http://collector:4317")
result = replay(engine, filters.call_conditions(), exporter, progress=callback)
```

Each `calls` row becomes its `chat {model}` CLIENT span and each `iterations` row its INTERNAL child, with
the attributes the live spans carried, read back through the same column-to-attribute table the store
writes with (`mapping.CALL_ATTRIBUTES`). Replaying twice sends the same ids, so a backend that dedupes by
id stays right. What the store does not keep is rebuilt, or left out:

- a call span keeps its trace id, span id, start (to the microsecond, as `start_time` holds it), duration,
  status and service; its parent span id is not stored, so it is replayed as the root of its trace;
- an iteration span's own id is not stored: it is derived from (call id, index), the same on every replay
  (not the id the live span had); it starts and ends at the call's end, as live;
- the resource is `service.name` alone; the scope is compactobs at this version;
- attributes the store has no column for are not replayed: `anthropic.beta`, `server.address` and
  `gen_ai.request.max_tokens` (tests/store/test_export_otlp.py checks that these are all that is missing);
- the call's `gen_ai.usage.*` are set to the billed totals even where the live span left them to a parent
  SDK span: the replayed span has no parent, so it is the trace's one token-carrying span;
- money is replayed as the float the live span carried (`float` of the stored NUMERIC).

Retries are the official exporters' own, per the OTLP specification: gRPC retries CANCELLED,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS, HTTP retries 429,
502, 503 and 504, both with exponential back-off (honouring the server's RetryInfo / Retry-After) up to six
attempts within their timeout. A batch still refused stops the replay with `ReplayError`: nothing is
skipped silently, and running the command again resends everything, under the same ids.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from sqlalchemy import ColumnElement, Engine, and_, func, select

from compactobs import semconv as t
from compactobs._version import __version__
from compactobs.errors import UserError
from compactobs.platforms import ANTHROPIC
from compactobs.store.mapping import CALL_ATTRIBUTES, ITERATION_ATTRIBUTES
from compactobs.store.models import calls, iterations
from compactobs.untrusted import stored_tags

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from compactobs._types import OTelAttributes, SQLRecord, SQLRow

_EXPORTER_LOGGER: Final = "opentelemetry.exporter.otlp"

__all__ = ["BATCH_CALLS", "ReplayError", "ReplayResult", "count_calls", "iteration_span_id", "replay"]

BATCH_CALLS: Final = 128
"""Calls per export request (with their iterations: ~4 spans a call, well under the collectors' limits)."""

ProgressCallback = Callable[[str, int, int], None]

_SCOPE: Final = InstrumentationScope(t.INSTRUMENTATION_SCOPE, __version__)
_FLAGS: Final = TraceFlags(TraceFlags.SAMPLED)
_STATUS: Final = {"OK": StatusCode.OK, "ERROR": StatusCode.ERROR}
# Columns whose attribute is not the stored value itself: computed below.
_COMPUTED: Final = {"attempts", "ttft_ms"}
_CALL_PAIRS: Final = tuple((c, a) for c, a in CALL_ATTRIBUTES.items() if c not in _COMPUTED)
_ITERATION_PAIRS: Final = tuple(ITERATION_ATTRIBUTES.items())


class ReplayError(UserError):
    """The endpoint refused or never answered a batch, after the exporter's retries. One line."""


@dataclass(frozen=True)
class ReplayResult:
    calls: int
    iterations: int
    requests: int
    """Export requests that succeeded."""
    retried: bool
    """Whether the exporter retried a request (a refusal with a retryable code, or no connection). Not a
    count: the gRPC exporter's log drops a message repeated word for word."""
    elapsed_s: float


class _ExporterLog(logging.Handler):
    """What the official exporter says while replaying: whether it retried, and its last error and retry
    kept for the one-line error. Its records are not printed meanwhile (they would break the progress bar)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.retried = False
        self.last_error: str | None = None
        self.last_retry: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = (record.getMessage().splitlines() or [""])[0]
        if record.levelno >= logging.ERROR:
            self.last_error = message
        elif "retrying" in message:
            self.retried = True
            self.last_retry = message

    def why(self) -> str:
        """The exporter's last error, and the last refusal it retried (HTTP's final error does not say)."""
        reasons = [r for r in (self.last_error, self.last_retry) if r]
        return f" ({'; '.join(reasons)})" if reasons else ""


@contextmanager
def _exporter_log() -> Iterator[_ExporterLog]:
    logger = logging.getLogger(_EXPORTER_LOGGER)
    handler = _ExporterLog()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def count_calls(engine: Engine, conditions: Sequence[ColumnElement[bool]]) -> int:
    """How many calls the conditions select (for the progress bar's total)."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(calls).where(and_(True, *conditions))
            ).scalar_one()
        )


def iteration_span_id(call_id: str, index: int) -> int:
    """The replayed iteration span's id: derived from its call and index, so every replay sends the same."""
    digest = hashlib.sha256(f"{call_id}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def _copy_columns(row: SQLRecord, pairs: Sequence[tuple[str, str]], attributes: OTelAttributes) -> None:
    """The attributes the store keeps as they are: every non-NULL column under its attribute's name
    (NUMERIC money as the float the live span carried)."""
    for column, attribute in pairs:
        value = row[column]
        if value is not None:
            attributes[attribute] = float(value) if isinstance(value, Decimal) else value


def _epoch_ns(moment: datetime) -> int:
    if moment.tzinfo is None:  # SQLite hands the stored UTC text back naive
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class _SpanBuilder:
    def __init__(self) -> None:
        self._resources: dict[str | None, Resource] = {}

    def _resource(self, service_name: str | None) -> Resource:
        resource = self._resources.get(service_name)
        if resource is None:
            attributes = {} if service_name is None else {t.RESOURCE_SERVICE_NAME: service_name}
            resource = self._resources[service_name] = Resource(attributes)
        return resource

    def call(self, row: SQLRow, iteration_rows: Sequence[SQLRow]) -> list[ReadableSpan]:
        """The call's span and its iterations' spans, children first, as the live provider ends them."""
        m = row._mapping
        attributes: OTelAttributes = {t.SPAN_KIND: t.SPAN_KIND_CALL}
        _copy_columns(m, _CALL_PAIRS, attributes)
        attributes[t.HTTP_RESEND_COUNT] = max(int(m["attempts"] or 1) - 1, 0)
        if m["ttft_ms"] is not None:
            attributes[t.RESPONSE_TIME_TO_FIRST_CHUNK] = m["ttft_ms"] / 1000.0
        if m["stop_reason"]:
            attributes[t.RESPONSE_FINISH_REASONS] = [m["stop_reason"]]
        if m["service_tier"] is not None:
            attributes[t.ANTHROPIC_SERVICE_TIER] = m["service_tier"]
        if m["input_tokens"] is not None:
            # The replayed span is its trace's only token-carrying span: gen_ai.usage.* are the billed totals.
            cache_write = (m["cache_write_5m_tokens"] or 0) + (m["cache_write_1h_tokens"] or 0)
            cache_read = m["cache_read_tokens"] or 0
            attributes[t.USAGE_INPUT_TOKENS] = m["input_tokens"] + cache_read + cache_write
            attributes[t.USAGE_OUTPUT_TOKENS] = m["output_tokens"] or 0
            attributes[t.USAGE_CACHE_READ] = cache_read
            attributes[t.USAGE_CACHE_WRITE] = cache_write
        if t.compacted(m["compactions_count"], m["compactions_failed"]):
            attributes[t.CONVERSATION_COMPACTED] = True
        for key, value in stored_tags(m["tags"]).items():
            attributes[t.TAG_PREFIX + key] = value

        trace_id = int(m["trace_id"], 16)
        context = SpanContext(trace_id, int(m["call_id"], 16), is_remote=False, trace_flags=_FLAGS)
        start_ns = _epoch_ns(m["start_time"])
        end_ns = start_ns + round((m["duration_ms"] or 0.0) * 1_000_000)
        resource = self._resource(m["service_name"])
        state = _STATUS.get(m["status"])
        status = Status(state, m["error_type"] if state is StatusCode.ERROR else None) if state else Status()
        model = m["request_model"] or m["response_model"] or "unknown"
        provider = m["provider"] or ANTHROPIC  # the call's platform, on its iterations as when live
        spans = [self._iteration(r, context, end_ns, resource, provider) for r in iteration_rows]
        spans.append(
            ReadableSpan(
                name=f"chat {model}",
                context=context,
                parent=None,
                resource=resource,
                attributes=attributes,
                kind=SpanKind.CLIENT,
                status=status,
                start_time=start_ns,
                end_time=end_ns,
                instrumentation_scope=_SCOPE,
            )
        )
        return spans

    def _iteration(
        self, row: SQLRow, parent: SpanContext, end_ns: int, resource: Resource, provider: str
    ) -> ReadableSpan:
        m = row._mapping
        attributes: OTelAttributes = {
            t.SPAN_KIND: t.SPAN_KIND_ITERATION,
            t.PROVIDER_NAME: provider,
            t.ITERATION_TIMING: t.ITERATION_TIMING_VALUE,
        }
        _copy_columns(m, _ITERATION_PAIRS, attributes)
        context = SpanContext(
            parent.trace_id, iteration_span_id(m["call_id"], m["idx"]), is_remote=False, trace_flags=_FLAGS
        )
        return ReadableSpan(
            name=f"{m['type']} {m['model'] or 'unknown'}",
            context=context,
            parent=parent,
            resource=resource,
            attributes=attributes,
            kind=SpanKind.INTERNAL,
            start_time=end_ns,
            end_time=end_ns,
            instrumentation_scope=_SCOPE,
        )


def replay(
    engine: Engine,
    conditions: Sequence[ColumnElement[bool]],
    exporter: SpanExporter,
    *,
    batch_calls: int = BATCH_CALLS,
    max_calls_per_s: float | None = None,
    progress: ProgressCallback | None = None,
    total: int | None = None,
) -> ReplayResult:
    """Send the calls the conditions select (oldest first) and their iterations through `exporter`, in
    requests of `batch_calls` calls, at most `max_calls_per_s` calls a second when given. Raises ReplayError
    when a request still fails after the exporter's retries (what was sent before stays sent)."""
    started = time.monotonic()
    builder = _SpanBuilder()
    sent_calls = sent_iterations = requests = 0
    query = select(calls).where(and_(True, *conditions)).order_by(calls.c.start_ms, calls.c.call_id)
    with engine.connect() as connection, engine.connect() as reader, _exporter_log() as log:
        result = connection.execution_options(stream_results=True, yield_per=batch_calls).execute(query)
        for chunk in result.partitions(batch_calls):
            ids = [row.call_id for row in chunk]
            by_call: dict[str, list[SQLRow]] = {}
            for row in reader.execute(
                select(iterations).where(iterations.c.call_id.in_(ids)).order_by(iterations.c.idx)
            ):
                by_call.setdefault(row.call_id, []).append(row)
            spans = [span for row in chunk for span in builder.call(row, by_call.get(row.call_id, ()))]
            if max_calls_per_s:
                # Pace the requests: this one goes out when the calls sent so far have had their time.
                wait = started + sent_calls / max_calls_per_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            if exporter.export(spans) is not SpanExportResult.SUCCESS:
                after = " after retries" if log.retried else ""
                raise ReplayError(
                    f"the endpoint did not take the calls{after}{log.why()}; "
                    f"{sent_calls:,} of {total if total is not None else 'the'} calls were sent before"
                )
            requests += 1
            sent_calls += len(chunk)
            sent_iterations += len(spans) - len(chunk)
            if progress is not None:
                progress("exporting", sent_calls, total if total is not None else sent_calls)
    return ReplayResult(sent_calls, sent_iterations, requests, log.retried, time.monotonic() - started)
