"""Instrumentation through the real SDK over real HTTP and SSE against compactobs.testing.

Costs are worked by hand from the list prices (claude-opus-4-8: $5 input, $25 output per MTok).
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import compactobs
from compactobs import semconv as t
from compactobs.instrument import state
from compactobs.recorder import Telemetry
from compactobs.testing import ErrorReply, Reply, Simulator, message

BETAS = ["compact-2026-01-12"]
COMPACTION_USAGE = {
    "input_tokens": 23000,
    "output_tokens": 1000,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
    "iterations": [
        {
            "type": "compaction",
            "input_tokens": 180000,
            "output_tokens": 3500,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
        {
            "type": "message",
            "input_tokens": 23000,
            "output_tokens": 1000,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    ],
}
# Billed: (180,000 + 23,000) x $5/M + (3,500 + 1,000) x $25/M = $1.015 + $0.1125 = $1.1275.
# The top level alone would say 23,000 x $5/M + 1,000 x $25/M = $0.14.
COMPACTION_COST = 1.1275


def compaction_reply() -> Reply:
    return Reply(
        message(
            model="claude-opus-4-8",
            content=[
                {"type": "compaction", "content": "Summary so far."},
                {"type": "text", "text": "Here you go."},
            ],
            usage=COMPACTION_USAGE,
        )
    )


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    compactobs.instrument(tracer_provider=provider, store=False)
    try:
        yield exporter
    finally:
        compactobs.uninstrument()
        compactobs.shutdown()


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
        yield simulator


def call_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    compactobs.flush()  # spans are emitted on compactobs' recording thread
    return [
        s for s in exporter.get_finished_spans() if (s.attributes or {}).get(t.SPAN_KIND) == t.SPAN_KIND_CALL
    ]


def iteration_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    compactobs.flush()
    return [
        s
        for s in exporter.get_finished_spans()
        if (s.attributes or {}).get(t.SPAN_KIND) == t.SPAN_KIND_ITERATION
    ]


def create_args(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-opus-4-8",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hello"}],
        "betas": BETAS,
        "context_management": {
            "edits": [{"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 150000}}]
        },
        **extra,
    }


def test_billed_totals_include_the_compaction_iteration(spans: InMemorySpanExporter, sim: Simulator) -> None:
    sim.enqueue(compaction_reply())
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    result = client.beta.messages.create(**create_args())
    assert result.usage.input_tokens == 23000  # what the SDK returns is untouched

    (call,) = call_spans(spans)
    a = call.attributes or {}
    assert call.name == "chat claude-opus-4-8"
    assert a[t.USAGE_INPUT_TOKENS] == 203000  # 180,000 + 23,000, no cache
    assert a[t.USAGE_OUTPUT_TOKENS] == 4500
    assert a[t.TOKENS_TOP_LEVEL_INPUT] == 23000
    assert a[t.COST_USD] == pytest.approx(COMPACTION_COST, abs=1e-9)
    assert a[t.COMPACTIONS_COUNT] == 1 and a[t.ITERATIONS_COUNT] == 2
    assert a[t.COMPACTION_TRIGGER] == 150000 and a[t.COMPACTION_PAUSE_AFTER] is False
    assert a[t.CONTEXT_TOKENS] == 23000
    assert a[t.ANTHROPIC_REQUEST_ID].startswith("req_")

    iterations = sorted(iteration_spans(spans), key=lambda s: (s.attributes or {})[t.ITERATION_INDEX])
    assert [s.name for s in iterations] == ["compaction claude-opus-4-8", "message claude-opus-4-8"]
    assert all(s.parent is not None and s.parent.span_id == call.context.span_id for s in iterations)
    # compaction: 180,000 x 5/M + 3,500 x 25/M = 0.9 + 0.0875 = 0.9875
    assert (iterations[0].attributes or {})[t.COST_USD] == pytest.approx(0.9875, abs=1e-9)
    # exactly one span carries token counts: the SDK's own span is switched off on instrumented clients
    assert sum(1 for s in spans.get_finished_spans() if t.USAGE_INPUT_TOKENS in (s.attributes or {})) == 1


def _comparable(span: ReadableSpan) -> dict[str, Any]:
    varying = {
        t.RESPONSE_ID,
        t.ANTHROPIC_REQUEST_ID,
        t.RESPONSE_TIME_TO_FIRST_CHUNK,
        t.REQUEST_STREAM,
        t.STREAM_END,
    }
    return {k: v for k, v in (span.attributes or {}).items() if k not in varying}


def test_every_call_style_gives_identical_span_attributes(
    spans: InMemorySpanExporter, sim: Simulator
) -> None:
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")

    def aclient() -> anthropic.AsyncAnthropic:
        # One per event loop: an async client's pooled connections belong to the loop that opened them.
        return anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="k")

    def create() -> None:
        client.beta.messages.create(**create_args())

    def create_stream() -> None:
        for _ in client.beta.messages.create(**create_args(), stream=True):
            pass

    def stream_helper() -> None:
        with client.beta.messages.stream(**create_args()) as stream:
            stream.get_final_message()

    def async_create() -> None:
        asyncio.run(aclient().beta.messages.create(**create_args()))

    def async_stream() -> None:
        async def run() -> None:
            async with aclient().beta.messages.stream(**create_args()) as stream:
                await stream.get_final_message()

        asyncio.run(run())

    def raw_response() -> None:
        client.beta.messages.with_raw_response.create(**create_args()).parse()

    styles = [create, create_stream, stream_helper, async_create, async_stream, raw_response]
    for style in styles:
        sim.enqueue(compaction_reply())
        style()
    calls = call_spans(spans)
    assert len(calls) == len(styles)
    first = _comparable(calls[0])
    for style, span in zip(styles, calls, strict=True):
        assert _comparable(span) == first, style.__name__
    assert len(iteration_spans(spans)) == 2 * len(styles)


def test_ga_namespace_is_recorded(spans: InMemorySpanExporter, sim: Simulator) -> None:
    sim.enqueue(Reply(message(model="claude-opus-4-8", usage={"input_tokens": 1000, "output_tokens": 200})))
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    client.messages.create(
        model="claude-opus-4-8", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    (call,) = call_spans(spans)
    # 1,000 x 5/M + 200 x 25/M = 0.005 + 0.005 = $0.01
    assert (call.attributes or {})[t.COST_USD] == pytest.approx(0.01, abs=1e-12)


def test_retries_are_one_call_with_a_resend_count(spans: InMemorySpanExporter, sim: Simulator) -> None:
    sim.enqueue(ErrorReply(429, retry_after=0))
    sim.enqueue(ErrorReply(529, retry_after=0))
    sim.enqueue(compaction_reply())
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=2)
    client.beta.messages.create(**create_args())
    assert len(sim.requests) == 3
    (call,) = call_spans(spans)
    assert (call.attributes or {})[t.HTTP_RESEND_COUNT] == 2
    assert t.ERROR_TYPE not in (call.attributes or {})


def test_failed_calls_are_recorded_without_cost(spans: InMemorySpanExporter, sim: Simulator) -> None:
    sim.enqueue(ErrorReply(400, should_retry=False))
    sim.enqueue(ErrorReply(529, retry_after=0))
    sim.enqueue(ErrorReply(529, retry_after=0))
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=1)
    with pytest.raises(anthropic.BadRequestError):
        client.beta.messages.create(**create_args())
    with pytest.raises(anthropic.InternalServerError):
        client.beta.messages.create(**create_args())
    bad, overloaded = call_spans(spans)
    assert (bad.attributes or {})[t.ERROR_TYPE] == "400" and (bad.attributes or {})[t.HTTP_STATUS_CODE] == 400
    assert (overloaded.attributes or {})[t.ERROR_TYPE] == "529"
    assert (overloaded.attributes or {})[t.HTTP_RESEND_COUNT] == 1
    assert all(t.COST_USD not in (s.attributes or {}) for s in (bad, overloaded))
    assert not bad.status.is_ok


def test_connection_refused_is_one_failed_call(spans: InMemorySpanExporter) -> None:
    client = anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key="k", max_retries=1)
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(
            model="claude-opus-4-8", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    (call,) = call_spans(spans)
    assert (call.attributes or {})[t.ERROR_TYPE] == "APIConnectionError"
    assert (call.attributes or {})[t.HTTP_RESEND_COUNT] == 1


def test_a_stream_cut_half_way_still_ends_its_span(spans: InMemorySpanExporter, sim: Simulator) -> None:
    sim.enqueue(Reply(compaction_reply().body, cut_after_events=3))
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0)
    with pytest.raises(Exception):  # noqa: B017 - the SDK's own error for a truncated body
        for _ in client.beta.messages.create(**create_args(), stream=True):
            pass
    (call,) = call_spans(spans)
    a = call.attributes or {}
    assert t.ERROR_TYPE in a
    # message_start carried the top-level input (23,000) and a placeholder output: not a bill. A failed call
    # carries no usage and no cost; the compaction block it was cut inside of still counts, flagged.
    assert t.TOKENS_INPUT not in a and t.COST_USD not in a
    assert (a[t.COMPACTIONS_COUNT], a[t.COMPACTIONS_ERRORED]) == (1, 1)


def test_an_abandoned_stream_ends_its_span_with_what_was_seen(
    spans: InMemorySpanExporter, sim: Simulator
) -> None:
    sim.enqueue(compaction_reply())
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    stream = client.beta.messages.create(**create_args(), stream=True)
    next(iter(stream))
    stream.close()
    (call,) = call_spans(spans)
    assert (call.attributes or {})[t.STREAM_END] == "closed"
    assert t.ERROR_TYPE not in (call.attributes or {})


def test_sdk_spans_kept_explicitly_make_compactobs_a_child(
    spans: InMemorySpanExporter, sim: Simulator
) -> None:
    sdk_exporter = InMemorySpanExporter()
    sdk_provider = TracerProvider()
    sdk_provider.add_span_processor(SimpleSpanProcessor(sdk_exporter))
    client = anthropic.Anthropic(
        base_url=sim.base_url, api_key="k", open_telemetry={"traces": True, "tracer_provider": sdk_provider}
    )
    for stream in (False, True):
        sim.enqueue(compaction_reply())
        if stream:
            for _ in client.beta.messages.create(**create_args(), stream=True):
                pass
        else:
            client.beta.messages.create(**create_args())
    sdk_spans = sdk_exporter.get_finished_spans()
    ours = call_spans(spans)
    assert len(sdk_spans) == 2 and len(ours) == 2
    for sdk_span, our_span in zip(sdk_spans, ours, strict=True):
        assert our_span.parent is not None and our_span.parent.span_id == sdk_span.context.span_id
        a = our_span.attributes or {}
        assert t.USAGE_INPUT_TOKENS not in a  # the SDK's span is the token-carrying one
        assert a[t.TOKENS_INPUT] == 203000 and a[t.COST_USD] == pytest.approx(COMPACTION_COST, abs=1e-9)


def test_conversation_context_and_fingerprint(spans: InMemorySpanExporter, sim: Simulator) -> None:
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    with compactobs.conversation("ticket-42", budget_usd=2.0):
        sim.enqueue(compaction_reply())
        client.beta.messages.create(**create_args())
    history = [{"role": "user", "content": "first"}]
    for turn in range(2):
        sim.enqueue(compaction_reply())
        client.beta.messages.create(**create_args(messages=history))
        history = [
            *history,
            {"role": "assistant", "content": f"reply {turn}"},
            {"role": "user", "content": "more"},
        ]
    named, first, second = call_spans(spans)
    assert (named.attributes or {})[t.CONVERSATION_ID] == "ticket-42"
    assert (named.attributes or {})[t.BUDGET_USD] == 2.0
    # a history re-sent each turn keeps its first message, so both turns share one fingerprint
    assert (first.attributes or {})[t.CONVERSATION_ID] == (second.attributes or {})[t.CONVERSATION_ID]
    assert str((first.attributes or {})[t.CONVERSATION_ID]).startswith("fp-")


def test_existing_clients_are_instrumented_and_uninstrument_stops(sim: Simulator) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    before = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    compactobs.instrument(tracer_provider=provider, store=False)
    try:
        sim.enqueue(compaction_reply())
        before.beta.messages.create(**create_args())
        assert len(call_spans(exporter)) == 1
        compactobs.uninstrument()
        sim.enqueue(compaction_reply())
        before.beta.messages.create(**create_args())
        after = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
        sim.enqueue(compaction_reply())
        after.beta.messages.create(**create_args())
        assert len(call_spans(exporter)) == 1
        assert after.middleware == ()
    finally:
        compactobs.uninstrument()
        compactobs.shutdown()
        gc.collect()


def test_explicit_middleware_on_one_client(sim: Simulator) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    compactobs.configure(tracer_provider=provider, store=False)  # where to record; no client patched
    try:
        client = anthropic.Anthropic(
            base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()], open_telemetry=False
        )
        sim.enqueue(compaction_reply())
        client.beta.messages.create(**create_args())
        (call,) = call_spans(exporter)
        assert (call.attributes or {})[t.COST_USD] == pytest.approx(COMPACTION_COST, abs=1e-9)
    finally:
        compactobs.shutdown()


def test_opentelemetry_instrument_entry_point_is_registered() -> None:
    from importlib.metadata import entry_points

    names = {ep.value for ep in entry_points(group="opentelemetry_instrumentor")}
    assert "compactobs.instrument.instrumentor:CompactobsInstrumentor" in names


class _HoldRecorderThread(SimpleSpanProcessor):
    """Exports spans, but holds compactobs' recording thread until released: a recorder that fell behind."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        super().__init__(exporter)
        self.release = threading.Event()

    def on_end(self, span: ReadableSpan) -> None:
        if threading.current_thread().name == "compactobs-recorder":
            self.release.wait(30)
        super().on_end(span)


def test_a_full_backlog_records_inline_and_loses_nothing(sim: Simulator) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    held = _HoldRecorderThread(exporter)
    provider.add_span_processor(held)
    compactobs.configure(tracer_provider=provider, store=False)
    telemetry = state.get_telemetry()
    assert telemetry is not None
    state.set_telemetry(Telemetry(provider, MeterProvider(), telemetry.pricer, backlog_limit=1))
    try:
        client = anthropic.Anthropic(
            base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()], open_telemetry=False
        )
        for _ in range(4):
            sim.enqueue(compaction_reply())
            client.beta.messages.create(**create_args())
        # The held thread has at most one call and the backlog one more: the others were recorded inline.
        inline = [
            s
            for s in exporter.get_finished_spans()
            if (s.attributes or {}).get(t.SPAN_KIND) == t.SPAN_KIND_CALL
        ]
        assert len(inline) >= 2
        held.release.set()
        calls = call_spans(exporter)
        assert len(calls) == 4
        assert len({(s.attributes or {})[t.RESPONSE_ID] for s in calls}) == 4
    finally:
        held.release.set()
        compactobs.shutdown()


def _metric_points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    return [
        point
        for resource in (data.resource_metrics if data else [])
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_metrics_count_every_call_once_when_the_recorder_sums_a_run_of_calls(sim: Simulator) -> None:
    """Counter increments of a run of calls are summed before they reach the SDK: the totals still add up
    call by call, and every call is one histogram observation."""
    reader = InMemoryMetricReader()
    compactobs.configure(
        tracer_provider=TracerProvider(), meter_provider=MeterProvider([reader]), store=False
    )
    try:
        client = anthropic.Anthropic(
            base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()], open_telemetry=False
        )
        calls = 7
        for _ in range(calls):
            sim.enqueue(compaction_reply())
            client.beta.messages.create(**create_args())
        compactobs.flush()
        cost = _metric_points(reader, t.METRIC_COST)
        assert sum(p.value for p in cost) == pytest.approx(calls * COMPACTION_COST, abs=1e-9)
        by_type = {p.attributes[t.ITERATION_TYPE]: p.value for p in cost}
        assert by_type["compaction"] == pytest.approx(calls * 0.9875, abs=1e-9)
        tokens = {
            (p.attributes[t.ITERATION_TYPE], p.attributes[t.DIM_TOKEN_CLASS]): p.value
            for p in _metric_points(reader, t.METRIC_TOKENS)
        }
        assert tokens == {
            ("compaction", "input"): calls * 180000,
            ("compaction", "output"): calls * 3500,
            ("message", "input"): calls * 23000,
            ("message", "output"): calls * 1000,
        }
        (compactions,) = _metric_points(reader, t.METRIC_COMPACTIONS)
        assert compactions.value == calls
        (duration,) = _metric_points(reader, t.METRIC_OPERATION_DURATION)
        assert duration.count == calls
        usage = {p.attributes[t.TOKEN_TYPE]: p for p in _metric_points(reader, t.METRIC_TOKEN_USAGE)}
        assert usage["input"].count == calls and usage["input"].sum == calls * 203000
    finally:
        compactobs.shutdown()


def test_explicit_middleware_learns_each_clients_retry_budget(sim: Simulator) -> None:
    """One Middleware() shared by a client and its `with_options` copies, none with the default budget."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    compactobs.configure(tracer_provider=provider, store=False)
    try:
        client = anthropic.Anthropic(
            base_url=sim.base_url,
            api_key="k",
            max_retries=0,
            open_telemetry=False,
            middleware=[compactobs.Middleware()],
        )
        sim.enqueue(ErrorReply(529, retry_after=0))
        with pytest.raises(anthropic.InternalServerError):
            client.beta.messages.create(**create_args())
        sim.enqueue(ErrorReply(500, retry_after=0), ErrorReply(500, retry_after=0))
        with pytest.raises(anthropic.InternalServerError):
            client.with_options(max_retries=1).beta.messages.create(**create_args())
        sim.enqueue(ErrorReply(529, retry_after=0), compaction_reply())
        client.with_options(max_retries=3).beta.messages.create(**create_args())
        assert len(sim.requests) == 5
        first, second, third = call_spans(exporter)
        assert (first.attributes or {})[t.ERROR_TYPE] == "529"
        assert (first.attributes or {})[t.HTTP_RESEND_COUNT] == 0
        assert (second.attributes or {})[t.ERROR_TYPE] == "500"
        assert (second.attributes or {})[t.HTTP_RESEND_COUNT] == 1
        assert t.ERROR_TYPE not in (third.attributes or {})
        assert (third.attributes or {})[t.COST_USD] == pytest.approx(COMPACTION_COST, abs=1e-9)
    finally:
        compactobs.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_record_its_parents_waiting_calls(sim: Simulator) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    held = _HoldRecorderThread(exporter)
    provider.add_span_processor(held)
    compactobs.configure(tracer_provider=provider, store=False)
    try:
        client = anthropic.Anthropic(
            base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()], open_telemetry=False
        )
        for _ in range(2):  # one call held by the recording thread, one waiting in the backlog
            sim.enqueue(compaction_reply())
            client.beta.messages.create(**create_args())
        pid = os.fork()
        if pid == 0:  # the child: the waiting call is the parent's to record, not the child's
            telemetry = state.get_telemetry()
            recorded = len(exporter.get_finished_spans())
            os._exit(0 if telemetry is not None and telemetry.drain(5) and not recorded else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        held.release.set()
        assert len(call_spans(exporter)) == 2
    finally:
        held.release.set()
        compactobs.shutdown()


def test_the_package_and_its_cli_import_the_sdk_only_with_the_middleware() -> None:
    """`import anthropic` takes over a second; the CLI's reports never touch a client."""
    import subprocess
    import sys

    script = (
        "import sys, compactobs, compactobs.cli\n"
        "print('anthropic' in sys.modules)\n"
        "import anthropic\n"
        "print(issubclass(compactobs.Middleware, anthropic.Middleware))\n"
        "from compactobs import Middleware\n"
        "from compactobs.instrument import Middleware as Same\n"
        "print(Middleware is Same is compactobs.Middleware)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "True", "True"], out.stderr
    with pytest.raises(AttributeError, match="no attribute 'Middlewar'"):
        compactobs.Middlewar  # noqa: B018


class _FailsOnce(SimpleSpanProcessor):
    """A span processor of the application's that raises on the first span it sees, as a buggy one can."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        super().__init__(exporter)
        self.failed = False

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("the application's span processor failed")
        super().on_start(span, parent_context)


def test_a_call_that_cannot_be_recorded_is_logged_and_the_next_ones_are_recorded(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(_FailsOnce(exporter))
    compactobs.configure(tracer_provider=provider, store=False)
    try:
        client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()])
        for _ in range(2):
            sim.enqueue(compaction_reply())
            client.beta.messages.create(**create_args())
        compactobs.flush()
        # the first call's span failed in the application's processor: one warning, with its traceback
        warned = [r for r in caplog.records if "could not record a call" in r.getMessage()]
        assert len(warned) == 1 and warned[0].exc_info is not None
        (second,) = call_spans(exporter)
        assert (second.attributes or {})[t.COST_USD] == pytest.approx(COMPACTION_COST, abs=1e-9)
    finally:
        compactobs.shutdown()
