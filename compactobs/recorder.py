"""The recording thread: each call's spans (one call span, one per iteration) and metrics, off the caller's
thread, from a CallObservation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Final, TypeAlias, TypedDict

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from compactobs._version import __version__
from compactobs.platforms import ANTHROPIC
from compactobs.semconv import (
    ANTHROPIC_BETA,
    ANTHROPIC_REQUEST_ID,
    ANTHROPIC_SERVICE_TIER,
    BATCH_CUSTOM_ID,
    BATCH_ID,
    BUDGET_MAX_COMPACTIONS,
    BUDGET_TOKENS,
    BUDGET_USD,
    CLOUD_REGION,
    COMPACTION_ON_DEMAND,
    COMPACTION_PAUSE_AFTER,
    COMPACTION_TRIGGER,
    COMPACTIONS_COUNT,
    COMPACTIONS_ERRORED,
    COMPACTIONS_FAILED,
    CONTEXT_TOKENS,
    CONVERSATION_COMPACTED,
    CONVERSATION_ID,
    COST_CACHE_READ,
    COST_CACHE_WRITE_1H,
    COST_CACHE_WRITE_5M,
    COST_INPUT,
    COST_OUTPUT,
    COST_PRICED,
    COST_SERVER_TOOLS,
    COST_USD,
    DIM_TOKEN_CLASS,
    ERROR_TYPE,
    GUARD_COMPLETE,
    GUARD_SEEN_USD,
    HTTP_RESEND_COUNT,
    HTTP_STATUS_CODE,
    INFERENCE_GEO,
    INSTRUMENTATION_SCOPE,
    ITERATION_DECLINED,
    ITERATION_INDEX,
    ITERATION_KNOWN_TYPE,
    ITERATION_TIMING,
    ITERATION_TIMING_VALUE,
    ITERATION_TYPE,
    ITERATIONS_COUNT,
    METRIC_COMPACTIONS,
    METRIC_COST,
    METRIC_INFERENCE_CACHE_READ_TOKENS,
    METRIC_INFERENCE_CACHE_WRITE_TOKENS,
    METRIC_INFERENCE_DURATION,
    METRIC_INFERENCE_INPUT_TOKENS,
    METRIC_INFERENCE_OPERATION_INPUT_TOKENS,
    METRIC_INFERENCE_OPERATION_OUTPUT_TOKENS,
    METRIC_INFERENCE_OUTPUT_TOKENS,
    METRIC_INFERENCE_REASONING_TOKENS,
    METRIC_OPERATION_DURATION,
    METRIC_TOKEN_USAGE,
    METRIC_TOKENS,
    OPERATION_NAME,
    PRICING_VERSION,
    PROVIDER_NAME,
    REQUEST_MAX_TOKENS,
    REQUEST_MODEL,
    REQUEST_STREAM,
    RESPONSE_FINISH_REASONS,
    RESPONSE_ID,
    RESPONSE_MODEL,
    RESPONSE_TIME_TO_FIRST_CHUNK,
    SERVER_ADDRESS,
    SERVICE_TIER,
    SOURCE_COST_USD,
    SPAN_KIND,
    SPAN_KIND_CALL,
    SPAN_KIND_ITERATION,
    SPEED,
    STOP_REASON,
    STREAM_END,
    TAG_PREFIX,
    TOKEN_CLASSES,
    TOKEN_MODALITY,
    TOKEN_MODALITY_UNKNOWN,
    TOKEN_TYPE,
    TOKENS_CACHE_READ,
    TOKENS_CACHE_WRITE_1H,
    TOKENS_CACHE_WRITE_5M,
    TOKENS_INPUT,
    TOKENS_OUTPUT,
    TOKENS_TOP_LEVEL_INPUT,
    TOKENS_TOP_LEVEL_OUTPUT,
    USAGE_CACHE_READ,
    USAGE_CACHE_WRITE,
    USAGE_INPUT_TOKENS,
    USAGE_OUTPUT_TOKENS,
    USAGE_REASONING,
    WEB_FETCH_REQUESTS,
    WEB_SEARCH_REQUESTS,
    compacted,
    latest_gen_ai_semconv,
)
from compactobs.untrusted import bounded_id, escape
from compactobs.usage import CallObservation, IterationUsage, TokenCounts

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Unpack

    from compactobs._types import OTelAttributes
    from compactobs.pricing import PricedCall, PricedIteration, Pricer

log = logging.getLogger("compactobs")

# Semconv's advised buckets: tokens in powers of 4, durations in doubling seconds.
_TOKEN_BUCKETS = [4.0**n for n in range(14)]
_DURATION_BUCKETS = [0.01 * 2**n for n in range(14)]


_ZERO: Final = Decimal(0)
_INPUT, _OUTPUT, _CACHE_READ, _CACHE_WRITE_5M, _CACHE_WRITE_1H = TOKEN_CLASSES


def _add_token_attributes(attributes: OTelAttributes, tokens: TokenCounts) -> None:
    attributes[TOKENS_INPUT] = tokens.input
    attributes[TOKENS_OUTPUT] = tokens.output
    attributes[TOKENS_CACHE_READ] = tokens.cache_read
    attributes[TOKENS_CACHE_WRITE_5M] = tokens.cache_write_5m
    attributes[TOKENS_CACHE_WRITE_1H] = tokens.cache_write_1h


def _add_cost_attributes(attributes: OTelAttributes, priced: PricedCall | PricedIteration) -> None:
    attributes[COST_PRICED] = priced.priced
    attributes[COST_INPUT] = float(priced.input_usd)
    attributes[COST_OUTPUT] = float(priced.output_usd)
    attributes[COST_CACHE_READ] = float(priced.cache_read_usd)
    attributes[COST_CACHE_WRITE_5M] = float(priced.cache_write_5m_usd)
    attributes[COST_CACHE_WRITE_1H] = float(priced.cache_write_1h_usd)
    if priced.cost_usd is not None:
        attributes[COST_USD] = float(priced.cost_usd)


_METRIC_ATTRIBUTE_SETS_LIMIT: Final = 1024
"""Histogram attribute sets kept for reuse; the working set is (models) x (error types), so small."""

BACKLOG_LIMIT: Final = 2048
"""Calls waiting for the recording thread before callers record their own calls inline."""

BATCH: Final = 128
"""Calls in the backlog that wake the recording thread early, before LINGER_S has passed."""
LINGER_S: Final = 0.1
"""How long the recording thread lets calls gather after a run of work. One wake-up per run, not per call:
each wake-up is a GIL hand-over between threads, and the counter increments of a run are summed. Why
100 ms: a run shorter than the interpreter's switch interval (5 ms) holds the GIL to its end, so the call
that wants it meanwhile waits the whole run, and short runs delay one call in every run (at 20 ms, one in
8 to 15 of the benchmark's 1.5-3 ms calls). A longer run yields at each switch interval, which puts its
delay on fewer calls: about 4% of them at 100 ms, whatever the calls' length. It is not less work."""
FLUSH_EVERY: Final = 64
"""Calls recorded between two hand-overs of the summed counter increments to the SDK, at most."""

_Item = tuple[CallObservation, "otel_context.Context | None", bool]
_MetricAttributes: TypeAlias = "tuple[OTelAttributes, OTelAttributes, OTelAttributes, OTelAttributes]"


class _SpanOptions(TypedDict, total=False):
    """The keywords `_start_span` passes on to `Tracer.start_span`."""

    context: otel_context.Context | None
    kind: SpanKind
    attributes: OTelAttributes
    start_time: int | None
    links: Sequence[Link] | None


_INFERENCE_COUNTERS: Final = (
    (METRIC_INFERENCE_INPUT_TOKENS, "Billed input tokens, cache and compaction included"),
    (METRIC_INFERENCE_OUTPUT_TOKENS, "Billed output tokens, compaction and reasoning included"),
    (METRIC_INFERENCE_CACHE_READ_TOKENS, "Billed input tokens read from the prompt cache"),
    (METRIC_INFERENCE_CACHE_WRITE_TOKENS, "Billed input tokens written to the prompt cache (5m and 1h)"),
    (METRIC_INFERENCE_REASONING_TOKENS, "Thinking tokens, part of the output tokens"),
)
"""The latest conventions' usage counters, in `_Sums.inference` order."""


class _Sums:
    """Counter increments of a run of calls, summed per series (instrument and attribute set) before they
    reach the SDK: one `add` per series instead of one per call, iteration and token class. Sums of counters
    are what a Sum aggregation keeps anyway; costs are summed as Decimal, exactly."""

    __slots__ = ("compactions", "cost", "inference", "tokens")

    def __init__(self) -> None:
        # Keyed by provider first (`gen_ai.provider.name`), then model.
        self.tokens: dict[tuple[str, str, str, str], int] = {}
        self.cost: dict[tuple[str, str, str], Decimal] = {}
        self.compactions: dict[tuple[str, str], int] = {}
        self.inference: dict[tuple[str, str, str | None], list[int]] = {}
        """The latest conventions' usage counters per (provider, model, response model), in
        `_INFERENCE_COUNTERS` order (only with OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental)."""


class _StableIds(IdGenerator):
    """compactobs' tracer's id generator: the wrapped one's random ids, except for a span whose ids were
    pinned (on this thread) just before it starts. A Message Batches result's spans get ids derived from
    its batch and `custom_id`, so a result read twice is the same span twice, which the store keeps once
    (it is keyed by span id)."""

    def __init__(self, wrapped: IdGenerator) -> None:
        self._wrapped = wrapped
        self._pinned = threading.local()

    def pin(self, ids: tuple[int, int] | None) -> None:
        """(trace id, span id) for the next span started on this thread; None: random again."""
        self._pinned.ids = ids

    def generate_trace_id(self) -> int:
        ids = getattr(self._pinned, "ids", None)
        return ids[0] if ids is not None else self._wrapped.generate_trace_id()

    def generate_span_id(self) -> int:
        ids = getattr(self._pinned, "ids", None)
        return ids[1] if ids is not None else self._wrapped.generate_span_id()


def batch_result_ids(batch_id: str, custom_id: str, part: str) -> tuple[int, int]:
    """(trace id, span id) of one span of a batch result: `part` is "call" or "iteration N". One trace per
    result (a batch can hold 100,000 of them: too many for one trace in most backends)."""
    digest = hashlib.blake2b(f"{batch_id}\x00{custom_id}\x00{part}".encode(), digest_size=24).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:], "big") or 1


class Telemetry:
    """Turns observations into spans and metrics on the given providers. Nothing here raises to the caller."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider,
        meter_provider: metrics.MeterProvider,
        pricer: Pricer,
        *,
        backlog_limit: int = BACKLOG_LIMIT,
    ) -> None:
        self.pricer = pricer
        self.tracer = tracer_provider.get_tracer(INSTRUMENTATION_SCOPE, __version__)
        # Only this tracer's generator is wrapped: the application's other spans keep theirs. A tracer that
        # is not the OpenTelemetry SDK's has none, and then batch results get random ids like any call.
        generator = getattr(self.tracer, "id_generator", None)
        self._stable_ids = _StableIds(generator) if isinstance(generator, IdGenerator) else None
        if self._stable_ids is not None:
            self.tracer.id_generator = self._stable_ids  # type: ignore[attr-defined]
        meter = meter_provider.get_meter(INSTRUMENTATION_SCOPE, __version__)
        self.latest_semconv = latest_gen_ai_semconv()
        if self.latest_semconv:
            self._input_tokens = meter.create_histogram(
                METRIC_INFERENCE_OPERATION_INPUT_TOKENS,
                unit="{token}",
                description="Billed input tokens per call, cache and compaction included",
                explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
            )
            self._output_tokens = meter.create_histogram(
                METRIC_INFERENCE_OPERATION_OUTPUT_TOKENS,
                unit="{token}",
                description="Billed output tokens per call, compaction included",
                explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
            )
            self._inference_counters = tuple(
                meter.create_counter(name, unit="{token}", description=description)
                for name, description in _INFERENCE_COUNTERS
            )
        else:
            self._token_usage = meter.create_histogram(
                METRIC_TOKEN_USAGE,
                unit="{token}",
                description="Billed tokens per call (all iterations, compaction included)",
                explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
            )
        self._duration = meter.create_histogram(
            METRIC_INFERENCE_DURATION if self.latest_semconv else METRIC_OPERATION_DURATION,
            unit="s",
            description="Duration of a GenAI call, all retries and stream reading included",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._cost = meter.create_counter(METRIC_COST, unit="USD", description="Billed cost")
        self._tokens = meter.create_counter(
            METRIC_TOKENS, unit="{token}", description="Billed tokens by class"
        )
        self._compactions = meter.create_counter(
            METRIC_COMPACTIONS, unit="{compaction}", description="Server-side compactions"
        )
        self._warned: set[str] = set()
        self._metric_attribute_sets: dict[tuple[str, str, str | None, str | None], _MetricAttributes] = {}
        # Bounded, so a recorder that falls behind costs callers time (see `record`), never memory.
        self._backlog_limit = backlog_limit
        self._closed = False
        self._reset_backlog()
        if hasattr(os, "register_at_fork"):
            forget = weakref.WeakMethod(self._forget_parents_backlog)
            os.register_at_fork(after_in_child=lambda: (method := forget()) and method())

    def _reset_backlog(self) -> None:
        # A deque, not a queue.Queue: a caller's hand-over is one append, with no lock and no wake-up unless
        # the recording thread sleeps. Drain markers (Events) travel in it too, so FIFO order says when
        # everything handed over before a drain has been recorded.
        self._backlog: deque[_Item | threading.Event] = deque()
        self._wake = threading.Event()
        self._sleeping = False
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()

    def _forget_parents_backlog(self) -> None:
        """In a forked child: the calls waiting in the backlog are the parent's, which records them; the
        child records its own, with fresh locks (a lock held at the fork would never be released)."""
        self._reset_backlog()

    def warn_once(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args, exc_info=exc_info)

    def record(
        self,
        observation: CallObservation,
        parent: otel_context.Context | None,
        under_sdk_span: bool,
    ) -> None:
        """Hand the call to the recording thread, which prices it and emits its spans and metrics.

        The caller's thread only appends to the backlog: reading the response body, pricing and span work
        stay out of its latency. When the backlog is full (the recording thread cannot keep up), the call is
        recorded here instead: slower, never lost. A guarded call (`observation.guarded`) waits in the
        backlog like any other: its conversation's next request counts it itself if it needs the figures
        first (waking this thread per call would undo the batching, and cost more than the counting).
        Never raises.
        """
        item = (observation, parent, under_sdk_span)
        backlog = self._backlog
        if len(backlog) >= self._backlog_limit or self._closed:
            sums = _Sums()
            self._record_safely(item, sums)
            self._add_sums(sums)
            return
        backlog.append(item)
        if self._closed:  # closed between the look above and the append: record what waits, this one too
            self._record_waiting()
            return
        if self._sleeping or len(backlog) == BATCH:
            self._wake.set()
        # `_work` clears `_worker` if it ever ends: a plain read here, not Thread.is_alive (a lock, ~3 us).
        if self._worker is None:
            self._start_worker()

    def close(self) -> None:
        """From now on each call is recorded on its caller's thread before the call returns: for the final
        shutdown, after which the recording thread may never run again (SIGTERM ends the process once the
        flush is done). A call that returned has then been recorded. Drain afterwards for the calls handed
        over before."""
        self._closed = True

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every call handed to `record` has become spans and metrics; False on timeout."""
        deadline = time.monotonic() + timeout_s
        marker = threading.Event()
        self._backlog.append(marker)
        self._wake.set()
        while True:
            if not self._worker_alive():
                self._start_worker()
            remaining = deadline - time.monotonic()
            if marker.wait(max(0.0, min(remaining, 0.5))):
                return True
            if remaining <= 0.5:
                return marker.is_set()

    def _worker_alive(self) -> bool:
        worker = self._worker
        return worker is not None and worker.is_alive()

    def _start_worker(self) -> None:
        """Start the recording thread; where no thread can start (interpreter exit), record inline."""
        with self._worker_lock:
            if self._worker_alive():
                return
            try:
                self._worker = threading.Thread(target=self._work, name="compactobs-recorder", daemon=True)
                self._worker.start()
                return
            except RuntimeError:
                self._worker = None
        self._record_waiting()

    def _record_waiting(self) -> None:
        """Record everything in the backlog, oldest first, and release the drains waiting behind it."""
        backlog = self._backlog
        sums = _Sums()
        recorded = 0
        while True:
            try:
                item = backlog.popleft()
            except IndexError:
                break
            if isinstance(item, threading.Event):
                self._add_sums(sums)
                recorded = 0
                item.set()
                continue
            self._record_safely(item, sums)
            recorded += 1
            if recorded >= FLUSH_EVERY:
                self._add_sums(sums)
                recorded = 0
        self._add_sums(sums)

    def _work(self) -> None:
        try:
            self._work_forever()
        finally:
            if self._worker is threading.current_thread():
                self._worker = None

    def _work_forever(self) -> None:
        backlog, wake = self._backlog, self._wake
        while True:
            self._record_waiting()
            # Let calls gather: callers append without waking us, unless BATCH of them wait or a drain asks.
            wake.wait(LINGER_S)
            wake.clear()
            if backlog:
                continue
            # No call came: sleep until one does. The flag goes up before the last look, so a caller that
            # appends after that look sees it and wakes us.
            self._sleeping = True
            if not backlog:
                wake.wait()
            wake.clear()
            self._sleeping = False

    def _record_safely(self, item: _Item, sums: _Sums) -> None:
        try:
            self._record(*item, sums)
        except Exception:
            self.warn_once(
                "record", "compactobs could not record a call; the call itself is unaffected", exc_info=True
            )

    def _add_sums(self, sums: _Sums) -> None:
        """Hand the summed counter increments to the SDK, and start the sums afresh."""
        try:
            for (provider, model, kind, token_class), count in sums.tokens.items():
                self._tokens.add(
                    count,
                    {
                        PROVIDER_NAME: provider,
                        RESPONSE_MODEL: model,
                        ITERATION_TYPE: kind,
                        DIM_TOKEN_CLASS: token_class,
                    },
                )
            for (provider, model, kind), usd in sums.cost.items():
                self._cost.add(
                    float(usd), {PROVIDER_NAME: provider, RESPONSE_MODEL: model, ITERATION_TYPE: kind}
                )
            for (provider, model), count in sums.compactions.items():
                self._compactions.add(count, {PROVIDER_NAME: provider, RESPONSE_MODEL: model})
            for (provider, model, response_model), counts in sums.inference.items():
                usage_attributes = self._metric_attributes(provider, model, response_model, None)[3]
                for counter, count in zip(self._inference_counters, counts, strict=True):
                    if count >= 0:  # -1: not known (reasoning tokens the usage did not report)
                        counter.add(count, usage_attributes)
        except Exception:
            self.warn_once("metrics", "compactobs could not record metrics", exc_info=True)
        finally:
            sums.tokens.clear()
            sums.cost.clear()
            sums.compactions.clear()
            sums.inference.clear()

    def _record(
        self,
        obs: CallObservation,
        parent: otel_context.Context | None,
        under_sdk_span: bool,
        sums: _Sums,
    ) -> None:
        guarded = obs.guarded
        if guarded is not None:
            # Counted by its guard first (here, or already by a request that needed the figures): its price
            # and any breach event are then on the observation.
            guarded.settle()
            obs.guarded = None
        obs.complete()
        request = obs.request
        usage = obs.usage
        when = datetime.fromtimestamp(obs.start_ns / 1e9, tz=timezone.utc)
        priced = obs.priced
        if priced is None and usage is not None:
            priced = self.pricer.price_call(usage, when)
        response_model = obs.response_model or (usage.response_model if usage else None)
        model = request.model or response_model or "unknown"
        provider = obs.provider or ANTHROPIC  # a call whose client is not known: first-party
        # One dict, built in place: a None value is left out, as OpenTelemetry would not take it.
        attributes: OTelAttributes = {
            SPAN_KIND: SPAN_KIND_CALL,
            PROVIDER_NAME: provider,
            OPERATION_NAME: "chat",
        }
        stop_reason, error_type = obs.stop_reason, obs.error_type
        for key, value in (
            (REQUEST_MODEL, request.model),
            (REQUEST_STREAM, request.stream),
            (REQUEST_MAX_TOKENS, request.max_tokens),
            (RESPONSE_MODEL, response_model),
            # Ids bounded here, not in the store: every sink of the span (an OTLP backend too) gets the same.
            (RESPONSE_ID, obs.response_id and bounded_id(obs.response_id)),
            (STOP_REASON, stop_reason),
            (CONVERSATION_ID, obs.conversation_id),
            (ANTHROPIC_REQUEST_ID, obs.request_id and bounded_id(obs.request_id)),
            (HTTP_RESEND_COUNT, obs.attempts - 1),
            (HTTP_STATUS_CODE, obs.status_code),
            (ERROR_TYPE, error_type),
            (SERVER_ADDRESS, obs.server_address),
            (CLOUD_REGION, obs.region),
            (COMPACTION_TRIGGER, request.compaction_trigger),
            (COMPACTION_PAUSE_AFTER, request.pause_after_compaction),
            (COMPACTION_ON_DEMAND, request.on_demand_compaction or None),
            (RESPONSE_TIME_TO_FIRST_CHUNK, obs.time_to_first_chunk_s),
            (STREAM_END, obs.stream_end),
            (BUDGET_USD, obs.budget_usd),
            (BUDGET_TOKENS, obs.budget_tokens),
            (BUDGET_MAX_COMPACTIONS, obs.budget_max_compactions),
            (BATCH_ID, obs.batch_id and bounded_id(obs.batch_id)),
            (BATCH_CUSTOM_ID, obs.custom_id and bounded_id(obs.custom_id)),
            (SOURCE_COST_USD, obs.source_cost_usd),
        ):
            if value is not None:
                attributes[key] = value
        for key, value in obs.tags:
            attributes[TAG_PREFIX + key] = value
        if request.betas:
            attributes[ANTHROPIC_BETA] = list(request.betas)
        if stop_reason:
            attributes[RESPONSE_FINISH_REASONS] = [stop_reason]
        if usage is not None and compacted(usage.compactions, obs.failed_compactions):
            attributes[CONVERSATION_COMPACTED] = True
        totals = None
        if usage is not None and priced is not None:
            totals = usage.totals
            _add_token_attributes(attributes, totals)
            if not under_sdk_span:
                # One token-carrying span per call: under the SDK's span, billed totals stay in compactobs.*.
                attributes[USAGE_INPUT_TOKENS] = totals.total_input
                attributes[USAGE_OUTPUT_TOKENS] = totals.output
                attributes[USAGE_CACHE_READ] = totals.cache_read
                attributes[USAGE_CACHE_WRITE] = totals.cache_write
            _add_cost_attributes(attributes, priced)
            attributes[COST_SERVER_TOOLS] = float(priced.server_tools_usd)
            if priced.pricing_version is not None:
                attributes[PRICING_VERSION] = priced.pricing_version
            top_level = usage.top_level
            attributes[TOKENS_TOP_LEVEL_INPUT] = top_level.input
            attributes[TOKENS_TOP_LEVEL_OUTPUT] = top_level.output
            attributes[WEB_SEARCH_REQUESTS] = usage.web_search_requests
            attributes[WEB_FETCH_REQUESTS] = usage.web_fetch_requests
            if usage.thinking_tokens is not None:
                attributes[USAGE_REASONING] = usage.thinking_tokens
            service_tier = usage.service_tier
            if service_tier is not None:
                attributes[SERVICE_TIER] = service_tier
                attributes[ANTHROPIC_SERVICE_TIER] = service_tier
            if usage.speed is not None:
                attributes[SPEED] = usage.speed
            if usage.inference_geo is not None:
                attributes[INFERENCE_GEO] = usage.inference_geo
            attributes[ITERATIONS_COUNT] = len(usage.iterations)
            attributes[COMPACTIONS_COUNT] = usage.compactions
            attributes[COMPACTIONS_FAILED] = obs.failed_compactions
            context_tokens = obs.context_after if obs.context_after is not None else usage.context_tokens
            if context_tokens is not None:
                attributes[CONTEXT_TOKENS] = context_tokens
            if obs.guard_seen is not None:
                attributes[GUARD_SEEN_USD] = float(obs.guard_seen[0])
                attributes[GUARD_COMPLETE] = obs.guard_seen[1]
            if usage.unknown_types:
                self.warn_once(
                    "unknown-type:" + escape(",".join(usage.unknown_types)),  # a bounded key
                    "compactobs: usage.iterations has entry types this SDK does not know (%s); "
                    "billed at the response model",
                    ", ".join(map(escape, usage.unknown_types)),
                )
        elif error_type is not None and obs.compactions:
            # An error call (a stream cut off by an `error` event) has no usage and no cost, but the
            # compactions it showed still happened: counted, and flagged as cut off by the error.
            attributes[COMPACTIONS_COUNT] = len(obs.compactions)
            attributes[COMPACTIONS_FAILED] = obs.failed_compactions
            attributes[COMPACTIONS_ERRORED] = len(obs.compactions)
        links: list[Link] = []
        pinned: tuple[str, str] | None = None
        if obs.batch_id is not None:
            # A batch result's span is the root of a trace of its own, linked to the code that read it: its
            # ids then depend on the result alone (see `_StableIds`).
            reader = trace.get_current_span(parent).get_span_context() if parent is not None else None
            if reader is not None and reader.is_valid:
                links.append(Link(reader))
            parent = otel_context.Context()
            if obs.custom_id is not None and self._stable_ids is not None:
                pinned = (obs.batch_id, obs.custom_id)
        span = self._start_span(
            pinned,
            "call",
            f"chat {model}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=obs.start_ns,
            links=links,
        )
        if error_type is not None:
            span.set_status(Status(StatusCode.ERROR, error_type))
        end_ns = max(obs.end_ns, obs.start_ns)
        if obs.events:
            for name, event_attributes in obs.events:
                span.add_event(name, event_attributes, timestamp=end_ns)
        if usage is not None and priced is not None:
            call_context = trace.set_span_in_context(span, parent)
            for iteration, priced_iteration in zip(usage.iterations, priced.iterations, strict=True):
                self._iteration_span(iteration, priced_iteration, call_context, end_ns, pinned, provider)
        span.end(end_time=end_ns)
        self._metrics(obs, provider, model, response_model, priced, totals, sums)

    def _start_span(
        self, pinned: tuple[str, str] | None, part: str, name: str, **options: Unpack[_SpanOptions]
    ) -> trace.Span:
        """`tracer.start_span`, with the ids of a batch result's `part` when `pinned` names the result."""
        if pinned is None or self._stable_ids is None:
            return self.tracer.start_span(name, **options)
        self._stable_ids.pin(batch_result_ids(*pinned, part))
        try:
            return self.tracer.start_span(name, **options)
        finally:
            self._stable_ids.pin(None)

    def _iteration_span(
        self,
        iteration: IterationUsage,
        priced: PricedIteration,
        call_context: otel_context.Context,
        end_ns: int,
        pinned: tuple[str, str] | None,
        provider: str,
    ) -> None:
        model = iteration.model
        attributes: OTelAttributes = {
            SPAN_KIND: SPAN_KIND_ITERATION,
            PROVIDER_NAME: provider,
            ITERATION_INDEX: iteration.index,
            ITERATION_TYPE: iteration.type,
            ITERATION_KNOWN_TYPE: iteration.known_type,
            ITERATION_DECLINED: iteration.declined,
            ITERATION_TIMING: ITERATION_TIMING_VALUE,
        }
        if model is not None:
            attributes[RESPONSE_MODEL] = model
        _add_token_attributes(attributes, iteration.tokens)
        _add_cost_attributes(attributes, priced)
        span = self._start_span(
            pinned,
            f"iteration {iteration.index}",
            f"{iteration.type} {model or 'unknown'}",
            context=call_context,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=end_ns,
        )
        span.end(end_time=end_ns)

    def _metric_attributes(
        self, provider: str, model: str, response_model: str | None, error_type: str | None
    ) -> _MetricAttributes:
        """The attribute sets of a call's GenAI metric points, made once per (provider, model, response model,
        error):
        the SDK copies what it is given, so one dict serves every call of a series (and is never changed).

        (duration, input tokens, output tokens, usage counters): by default the token histogram's two sets
        carry `gen_ai.token.type`; with the latest conventions the token histograms are two instruments
        that take the duration's set, and the usage counters carry `gen_ai.token.modality` instead."""
        key = (provider, model, response_model, error_type)
        cached = self._metric_attribute_sets.get(key)
        if cached is not None:
            return cached
        base: OTelAttributes = {PROVIDER_NAME: provider, OPERATION_NAME: "chat", REQUEST_MODEL: model}
        if response_model:
            base[RESPONSE_MODEL] = response_model
        duration_attributes: OTelAttributes = dict(base)
        if error_type is not None:
            duration_attributes[ERROR_TYPE] = error_type
        usage_attributes: OTelAttributes = {**base, TOKEN_MODALITY: TOKEN_MODALITY_UNKNOWN}
        if self.latest_semconv:
            cached = (duration_attributes, duration_attributes, duration_attributes, usage_attributes)
        else:
            cached = (
                duration_attributes,
                {**base, TOKEN_TYPE: "input"},
                {**base, TOKEN_TYPE: "output"},
                usage_attributes,
            )
        if len(self._metric_attribute_sets) >= _METRIC_ATTRIBUTE_SETS_LIMIT:
            self._metric_attribute_sets.clear()
        self._metric_attribute_sets[key] = cached
        return cached

    def _metrics(
        self,
        obs: CallObservation,
        provider: str,
        model: str,
        response_model: str | None,
        priced: PricedCall | None,
        totals: TokenCounts | None,
        sums: _Sums,
    ) -> None:
        """Histograms now (each call is one observation); counter increments into `sums`."""
        duration_attributes, input_attributes, output_attributes, _ = self._metric_attributes(
            provider, model, response_model, obs.error_type
        )
        if obs.batch_id is None:  # a batch result has no duration the application saw
            self._duration.record(max(obs.end_ns - obs.start_ns, 0) / 1e9, duration_attributes)
        usage = obs.usage
        if self.latest_semconv:
            # The latest conventions count every call, one without usage (failed) as 0 tokens.
            self._latest_token_metrics(obs, provider, model, response_model, totals, sums)
        if usage is None or priced is None or totals is None:
            if obs.error_type is not None and obs.compactions:  # an error call's compactions (see _record)
                errored_key = (provider, response_model or model)
                sums.compactions[errored_key] = sums.compactions.get(errored_key, 0) + len(obs.compactions)
            return
        if not self.latest_semconv:
            self._token_usage.record(totals.total_input, input_attributes)
            self._token_usage.record(totals.output, output_attributes)
        tokens_sums, cost_sums = sums.tokens, sums.cost
        for iteration, priced_iteration in zip(usage.iterations, priced.iterations, strict=True):
            series = iteration.model or "unknown"
            kind = iteration.type
            tokens = iteration.tokens
            for token_class, count in (
                (_INPUT, tokens.input),
                (_OUTPUT, tokens.output),
                (_CACHE_READ, tokens.cache_read),
                (_CACHE_WRITE_5M, tokens.cache_write_5m),
                (_CACHE_WRITE_1H, tokens.cache_write_1h),
            ):
                if count:
                    key = (provider, series, kind, token_class)
                    tokens_sums[key] = tokens_sums.get(key, 0) + count
            if priced_iteration.cost_usd:
                cost_key = (provider, series, kind)
                cost_sums[cost_key] = cost_sums.get(cost_key, _ZERO) + priced_iteration.cost_usd
        if priced.server_tools_usd:
            cost_key = (provider, response_model or model, "server_tools")
            cost_sums[cost_key] = cost_sums.get(cost_key, _ZERO) + priced.server_tools_usd
        compactions = usage.compactions
        if compactions:
            compaction_key = (provider, response_model or model)
            sums.compactions[compaction_key] = sums.compactions.get(compaction_key, 0) + compactions

    def _latest_token_metrics(
        self,
        obs: CallObservation,
        provider: str,
        model: str,
        response_model: str | None,
        totals: TokenCounts | None,
        sums: _Sums,
    ) -> None:
        """The latest conventions' token histograms now, their usage counters into `sums`."""
        histogram_attributes = self._metric_attributes(provider, model, response_model, obs.error_type)[0]
        total_input = totals.total_input if totals is not None else 0
        output = totals.output if totals is not None else 0
        self._input_tokens.record(total_input, histogram_attributes)
        self._output_tokens.record(output, histogram_attributes)
        key = (provider, model, response_model)
        counts = sums.inference.get(key)
        if counts is None:
            counts = sums.inference[key] = [0, 0, 0, 0, -1]
        counts[0] += total_input
        counts[1] += output
        if totals is not None:
            counts[2] += totals.cache_read
            counts[3] += totals.cache_write
            thinking = obs.usage.thinking_tokens if obs.usage is not None else None
            if thinking is not None:
                counts[4] = max(counts[4], 0) + thinking
